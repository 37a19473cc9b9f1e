use super::*;

/// The cgroups of a worker `id` and one command cgroup (named by a command
/// id) under them; `None` (the test is skipped) where none are usable.
fn with_command_cgroup(id: &str) -> Option<(Cgroups, CommandCgroup)> {
    let Ok(cgroups) = Cgroups::detect(id) else {
        eprintln!("no usable cgroups here; skipped");
        return None;
    };
    let cg = cgroups
        .create(
            &uuid::Uuid::now_v7().to_string(),
            &rdev_shared::containment::ResourceLimits::default(),
        )
        .expect("command cgroup");
    Some((cgroups, cg))
}

/// Issue 15 (found by the chaos run): a command's processes left by a
/// worker that was SIGKILLed are killed when a worker with its id
/// starts again.
#[test]
fn a_restarted_worker_kills_what_its_predecessor_left() {
    let id = format!("sweep-{:08x}", rand::random::<u32>());
    let Some((_first, cg)) = with_command_cgroup(&id) else {
        return;
    };
    // Other tests of this binary launch sandboxes meanwhile.
    let mut orphan = crate::sandbox::process::spawn_exclusive(|| {
        std::process::Command::new("sleep").arg("300").spawn()
    })
    .expect("sleep");
    for dir in &cg.dirs {
        fs::write(dir.join("cgroup.procs"), orphan.id().to_string()).expect("join");
    }
    let dirs = cg.dirs.clone();
    drop(cg); // the worker died: nobody removes it
    let _second = Cgroups::detect(&id).expect("detect again");
    let status = orphan.wait().expect("wait");
    assert!(!status.success(), "the orphan was killed: {status:?}");
    for dir in &dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
        if let Some(base) = dir.parent() {
            let _ = fs::remove_dir(base);
        }
    }
}

/// A command cgroup whose removal never ran (its task was dropped with a
/// stopping runtime) goes when the worker's cgroups do, with the worker's
/// own directory (v1): a stopped worker, or a test, leaves none behind.
#[test]
fn a_stopping_worker_removes_the_command_cgroups_left() {
    let id = format!("stop-{:08x}", rand::random::<u32>());
    let Some((cgroups, cg)) = with_command_cgroup(&id) else {
        return;
    };
    let v1 = matches!(cgroups.kind, Kind::V1 { .. });
    let dirs = cg.dirs.clone();
    drop(cg); // its removal never ran
    drop(cgroups);
    for dir in &dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
        let base = dir.parent().expect("the worker's directory");
        assert!(!v1 || !base.exists(), "{} removed", base.display());
    }
}

const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 0:40 /kube/pod1 /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw
";

#[test]
fn mountinfo_yields_cgroup_hierarchies() {
    let mounts = parse_mountinfo(MOUNTINFO);
    assert_eq!(mounts.len(), 4);
    assert_eq!(
        mounts[0].mount_point,
        PathBuf::from("/sys/fs/cgroup/memory")
    );
    assert_eq!(mounts[0].controllers, ["rw", "memory"]);
    assert!(mounts[2].v2);
    assert_eq!(mounts[3].mount_point, PathBuf::from("/sys/fs/cgroup x"));
    assert_eq!(mounts[3].root, "/kube/pod1");
}

#[test]
fn own_cgroup_is_found_per_controller() {
    let mounts = parse_mountinfo(MOUNTINFO);
    let membership = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n0::/user.slice\n";
    assert_eq!(
        own_dir(&mounts, membership, Some("memory")),
        Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
    );
    assert_eq!(
        own_dir(&mounts, membership, Some("pids")),
        Some(PathBuf::from("/sys/fs/cgroup/pids"))
    );
    assert_eq!(
        own_dir(&mounts, membership, None),
        Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice"))
    );
    assert_eq!(own_dir(&mounts, membership, Some("cpu")), None);
}

#[test]
fn event_counters_are_read_by_key() {
    let dir = std::env::temp_dir().join(format!("rdev-cg-{:08x}", rand::random::<u32>()));
    fs::create_dir_all(&dir).expect("dir");
    fs::write(
        dir.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .expect("write");
    fs::write(dir.join("pids.events"), "max 7\n").expect("write");
    let cg = CommandCgroup {
        dirs: Vec::new(),
        procs: Vec::new(),
        memory: Some(dir.clone()),
        pids: Some(dir.clone()),
        v2: false,
    };
    assert_eq!(
        cg.events(),
        Events {
            oom_kills: 2,
            pids_max: 7
        }
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn worker_ids_become_one_path_component() {
    assert_eq!(sanitize("host-1/../x y"), "host-1____x_y");
}
