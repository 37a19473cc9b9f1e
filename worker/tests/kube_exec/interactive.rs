//! Input over the exec stream: piped stdin, terminals, signals, and
//! secrets that travel on stdin.

use crate::fake_kube::*;

use std::time::Duration;

use rdev_shared::interactive::{Input, InputSignal, TtySize};
use rdev_worker::executor::Outcome;

use super::{data, run, run_driven, settings, sh};

#[tokio::test]
async fn piped_input_arrives_in_order_and_eof_closes_it_on_v5() {
    let fake = Fake::start("v5.channel.k8s.io").await;
    fake.set_pods(SELECTOR, vec![pod("web-1", true)]);
    let exec = fake.executor(settings());
    let ran = run_driven(
        &exec,
        sh("while read l; do echo got-$l; done; echo done"),
        vec![
            ("", vec![data("a\n")]),
            ("got-a\n", vec![data("b\n"), Input::Eof]),
        ],
    )
    .await;
    assert!(matches!(ran.outcome, Outcome::Exited(0)), "{ran:?}");
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "got-a\ngot-b\ndone\n");
}

#[tokio::test]
async fn a_terminal_starts_at_its_size_resizes_and_takes_ctrl_c() {
    for protocol in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        let fake = Fake::start(protocol).await;
        fake.set_pods(SELECTOR, vec![pod("web-1", true)]);
        let exec = fake.executor(settings());
        // The first `stty size` waits for a line: the runtime starts the
        // process before the client's first resize arrives (as a real one
        // does). kube sends resizes and stdin on separate channels, so the
        // shell polls for the new size instead of reading it after a line.
        let mut j = sh("echo ready; read l; stty size; \
             while [ \"$(stty size)\" != '30 100' ]; do sleep 0.05; done; echo resized; \
             trap 'echo got-int; exit 5' INT; read l; echo bye-$l >&2; \
             while :; do sleep 0.1; done");
        j.tty = Some(TtySize { cols: 90, rows: 20 });
        j.timeout = Duration::from_secs(600);
        let ran = run_driven(
            &exec,
            j,
            vec![
                ("ready", vec![data("go\r")]),
                (
                    "20 90",
                    vec![Input::Resize {
                        size: TtySize {
                            cols: 100,
                            rows: 30,
                        },
                    }],
                ),
                ("resized", vec![data("y\r")]),
                (
                    "bye-y",
                    vec![Input::Signal {
                        signal: InputSignal::Int,
                    }],
                ),
            ],
        )
        .await;
        let text = String::from_utf8_lossy(&ran.stdout);
        // One stream: stderr arrives on the terminal, with its line endings.
        assert!(text.contains("bye-y\r\n"), "{protocol}: {text}");
        assert!(ran.stderr.is_empty(), "{protocol}: {ran:?}");
        // Ctrl-C reached the shell as SIGINT (its trap ran): the terminal
        // turned the key into a signal for the foreground process group.
        assert!(text.contains("got-int"), "{protocol}: {text}");
        assert!(
            matches!(ran.outcome, Outcome::Exited(5)),
            "{protocol}: {ran:?}"
        );
        assert_eq!(
            *fake.state.resizes.lock().expect("resizes"),
            vec![(90, 20), (100, 30)],
            "{protocol}"
        );
    }
}

#[tokio::test]
async fn a_signal_without_a_terminal_reaches_the_command() {
    let fake = Fake::start("v4.channel.k8s.io").await;
    fake.set_pods(SELECTOR, vec![pod("web-1", true)]);
    let exec = fake.executor(settings());
    let ran = run_driven(
        &exec,
        sh("trap 'echo got-usr1; exit 7' USR1; echo ready; while :; do sleep 0.1; done"),
        vec![(
            "ready\n",
            vec![Input::Signal {
                signal: InputSignal::Usr1,
            }],
        )],
    )
    .await;
    assert!(matches!(ran.outcome, Outcome::Exited(7)), "{ran:?}");
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "ready\ngot-usr1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_travel_on_stdin_never_in_the_exec_request() {
    use rdev_worker::secrets::{JobSecrets, SecretValue};
    let token = "multi\nline 'quoted' $HOME `x` value\n";
    for protocol in ["v4.channel.k8s.io", "v5.channel.k8s.io"] {
        for stdin in [None, Some(b"fixed input".to_vec())] {
            let fake = Fake::start(protocol).await;
            let exec = fake.executor(settings());
            let mut j = sh("printf '[%s][%s]' \"$TOKEN\" \"$OTHER\"; cat");
            j.stdin = stdin.clone();
            j.secrets = JobSecrets {
                env: vec![
                    ("TOKEN".into(), SecretValue::new(token)),
                    ("OTHER".into(), SecretValue::new("second-secret")),
                ],
                files: Vec::new(),
            };
            let ran = run(&exec, j).await;
            assert_eq!(ran.outcome, Outcome::Exited(0), "{protocol}: {ran:?}");
            let rest = String::from_utf8_lossy(stdin.as_deref().unwrap_or_default()).into_owned();
            assert_eq!(
                String::from_utf8_lossy(&ran.stdout),
                format!("[{token}][second-secret]{rest}"),
                "{protocol}"
            );
            for e in fake.command_execs() {
                let line = e.command.join(" ");
                assert!(
                    !line.contains("second-secret") && !line.contains("quoted"),
                    "a value is in the exec request: {line}"
                );
            }
        }
    }
}
