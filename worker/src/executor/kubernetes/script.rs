//! The POSIX shell scripts a command's exec session runs in the pod: the
//! wrapper around the command ([`wrapper_script`]), and the scripts that
//! signal ([`signal_script`]) or stop ([`kill_script`]) it through a second
//! exec. Everything that comes from a job is single-quoted; nothing is
//! interpolated.

use std::time::Duration;

use rdev_shared::domain::{CommandSpec, KubernetesSettings as KubeProject, validate_env_name};
use rdev_shared::kube::{KubeError, sh_quote};

use crate::executor::Job;

/// How long the stop script waits for the pid file of a command that has
/// only just started.
pub(super) const PIDFILE_WAIT_S: u32 = 5;

fn pidfile(run_id: &str) -> String {
    format!("\"${{TMPDIR:-/tmp}}/rdev-{run_id}.pid\"")
}

/// The script `/bin/sh -c` runs in the pod for `job` (see the module docs).
/// Everything from the job is single-quoted; nothing is interpolated.
///
/// The run also gets a watchdog in the pod, in a session of its own and
/// started before `RDEV_RUN_ID` is exported (so the stop script spares it):
/// if the run still goes `timeout + 2 × grace + 5 s` after it started, the
/// watchdog runs [`kill_script`] itself. That bounds a remote command whose
/// worker died (SIGKILL, node lost) and so never stopped it; the watchdog
/// exits within a second of the run's end (it watches the pid file).
pub fn wrapper_script(
    job: &Job,
    project: &KubeProject,
    run_id: &str,
    grace: Duration,
) -> Result<String, KubeError> {
    let mut body = watchdog(job.timeout, run_id, grace);
    exports(job, &mut body)?;
    if let Some(dir) = &project.workdir {
        if has_nul(dir) {
            return Err(KubeError::Invalid("workdir contains NUL".into()));
        }
        body.push_str(&format!("cd {} || exit 1\n", sh_quote(dir)));
    }
    let command = command_line(&job.spec)?;
    match job.stdin.as_deref() {
        Some(data) if !data.is_empty() => {
            body.push_str(&format!("head -c {} | {command}\n", data.len()));
        }
        // Interactive: the exec stream's stdin (or terminal) is its own. A
        // client's signals go to the whole process group: the wrapper
        // outlives them (a caught signal is reset to the default in the
        // command) so it reports the command's own exit status.
        _ if job.stdin_pipe => {
            body.push_str(&format!("trap : HUP INT QUIT USR1 USR2\n{command}\n"))
        }
        _ => body.push_str(&format!("{command} < /dev/null\n")),
    }
    body.push_str("c=$?\n[ -n \"$f\" ] && rm -f \"$f\"\nexit $c\n");
    // Outer part: become a process-group leader when not one already. Only
    // when the current group is known and differs: `setsid` forks (and its
    // parent exits at once) when called by a group leader.
    Ok(format!(
        "s={}\n\
         {{ read -r _ _ _ _ g _ < /proc/$$/stat; }} 2>/dev/null\n\
         if [ -n \"$g\" ] && [ \"$g\" != \"$$\" ] && command -v setsid >/dev/null 2>&1; then exec setsid /bin/sh -c \"$s\"; fi\n\
         eval \"$s\"\n",
        sh_quote(&body)
    ))
}

fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// The start of the wrapper: the pid file (`$f`), the watchdog started in
/// a session of its own, then `RDEV_RUN_ID`, which marks every process of
/// the run (inherited through `setsid` and double forks) for the stop
/// script's sweep.
fn watchdog(timeout: Duration, run_id: &str, grace: Duration) -> String {
    let deadline_s = (timeout + grace * 2).as_secs() + WATCHDOG_MARGIN_S;
    let watchdog = format!(
        "i=0\nwhile [ $i -lt {deadline_s} ]; do sleep 1; i=$((i+1)); if [ -n \"$f\" ] && [ ! -e \"$f\" ]; then exit 0; fi; done\n{}",
        kill_script(run_id, grace)
    );
    format!(
        "f={}\n{{ echo $$ > \"$f\"; }} 2>/dev/null || f=\n\
         w={}\n\
         {{ if command -v setsid >/dev/null 2>&1; then f=\"$f\" setsid /bin/sh -c \"$w\"; else f=\"$f\" /bin/sh -c \"$w\"; fi; }} </dev/null >/dev/null 2>&1 &\n\
         export {RUN_ID_VAR}={run_id}\n",
        pidfile(run_id),
        sh_quote(&watchdog)
    )
}

/// The command's variables, then its secrets: each secret value exactly
/// its length read from stdin (`dd bs=1` never reads ahead), the `x` keeps
/// trailing newlines through `$( )`.
fn exports(job: &Job, body: &mut String) -> Result<(), KubeError> {
    for (k, v) in &job.env {
        validate_env_name(k).map_err(|m| KubeError::Invalid(format!("env {k}: {m}")))?;
        if has_nul(v) {
            return Err(KubeError::Invalid(format!("env {k}: contains NUL")));
        }
        body.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    for (k, v) in &job.secrets.env {
        validate_env_name(k).map_err(|m| KubeError::Invalid(format!("secret {k}: {m}")))?;
        body.push_str(&format!(
            "{k}=$(dd bs=1 count={} 2>/dev/null; echo x); {k}=${{{k}%x}}; export {k}\n",
            v.expose().len()
        ));
    }
    Ok(())
}

/// The command, quoted: a shell line through `/bin/sh -c`, an argv word by
/// word.
fn command_line(spec: &CommandSpec) -> Result<String, KubeError> {
    Ok(match spec {
        CommandSpec::Shell(line) => {
            if has_nul(line) {
                return Err(KubeError::Invalid("command contains NUL".into()));
            }
            format!("/bin/sh -c {}", sh_quote(line))
        }
        CommandSpec::Argv(argv) => {
            if argv.is_empty() {
                return Err(KubeError::Invalid("empty argv".into()));
            }
            if argv.iter().any(|a| has_nul(a)) {
                return Err(KubeError::Invalid("argv contains NUL".into()));
            }
            argv.iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        }
    })
}

/// Seconds the watchdog of a run waits beyond its timeout and two grace
/// periods (the worker's own timeout handling normally comes first).
const WATCHDOG_MARGIN_S: u64 = 5;

/// The script that sends `signal` (a name such as `TERM`) to run
/// `run_id`'s process group and every process carrying its `RDEV_RUN_ID`.
pub fn signal_script(run_id: &str, signal: &str) -> String {
    format!(
        "f={pidfile}\n\
         p=\n\
         {{ read -r p < \"$f\"; }} 2>/dev/null\n\
         case $p in *[!0-9]*) p=;; esac\n\
         [ -n \"$p\" ] && {{ kill -{signal} -$p 2>/dev/null || kill -{signal} $p 2>/dev/null; }}\n\
         for d in /proc/[0-9]*; do tr '\\0' '\\n' < \"$d/environ\" 2>/dev/null | grep -qx '{RUN_ID_VAR}={run_id}' && kill -{signal} \"${{d#/proc/}}\" 2>/dev/null; done\n\
         exit 0\n",
        pidfile = pidfile(run_id)
    )
}

/// Variable the wrapper exports to every process of a run.
pub const RUN_ID_VAR: &str = "RDEV_RUN_ID";

/// The script that stops run `run_id`: SIGTERM to its process group (or its
/// pid, if it could not lead a group) and to every process whose
/// environment carries `RDEV_RUN_ID=<run_id>` (children that left the group
/// with `setsid` or a double fork; needs `tr` and `grep`, else only the
/// group is stopped), SIGKILL to what is left once `grace` has passed.
/// Exits 0 when there is nothing to stop.
pub fn kill_script(run_id: &str, grace: Duration) -> String {
    let grace_s = grace.as_secs().max(1);
    format!(
        "f={pidfile}\n\
         i=0\n\
         while [ ! -s \"$f\" ] && [ $i -lt {PIDFILE_WAIT_S} ]; do sleep 1; i=$((i+1)); done\n\
         p=\n\
         {{ read -r p < \"$f\"; }} 2>/dev/null\n\
         case $p in *[!0-9]*) p=;; esac\n\
         marked() {{ for d in /proc/[0-9]*; do tr '\\0' '\\n' < \"$d/environ\" 2>/dev/null | grep -qx '{RUN_ID_VAR}={run_id}' && echo \"${{d#/proc/}}\"; done; }}\n\
         sig() {{ [ -n \"$p\" ] && {{ kill -$1 -$p 2>/dev/null || kill -$1 $p 2>/dev/null; }}; for q in $(marked); do [ \"$q\" = \"$$\" ] || kill -$1 $q 2>/dev/null; done; }}\n\
         alive() {{ [ -n \"$p\" ] && {{ kill -0 -$p || kill -0 $p; }} 2>/dev/null && return 0; [ -n \"$(marked)\" ]; }}\n\
         sig TERM\n\
         i=0\n\
         while [ $i -lt {grace_s} ] && alive; do sleep 1; i=$((i+1)); done\n\
         sig KILL\n\
         rm -f \"$f\"\n\
         exit 0\n",
        pidfile = pidfile(run_id)
    )
}

#[cfg(test)]
mod tests {
    use rdev_shared::domain::ExecutorConfig;

    use super::*;

    #[test]
    fn env_names_are_checked_again() {
        let job = Job {
            secrets: Default::default(),
            name: "c".into(),
            spec: CommandSpec::Shell("true".into()),
            env: [("BAD NAME".to_owned(), "x".to_owned())].into(),
            stdin: None,
            stdin_pipe: false,
            tty: None,
            executor: ExecutorConfig::default(),
            project: "p".into(),
            timeout: Duration::from_secs(1),
            network: rdev_shared::containment::NetworkMode::Host,
            limits: rdev_shared::containment::ResourceLimits::default(),
        };
        let project = KubeProject {
            namespace: "ns".into(),
            selector: "app=x".into(),
            container: None,
            workdir: None,
        };
        assert!(matches!(
            wrapper_script(&job, &project, "1", Duration::from_secs(1)),
            Err(KubeError::Invalid(_))
        ));
    }
}
