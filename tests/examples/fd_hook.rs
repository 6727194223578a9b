//! A rotation hook that is a binary, not a script: its `create` step prints,
//! as the new value, the descriptors it was started with (`0=pipe 1=pipe
//! 2=pipe`, a socket as `N=socket`, a file by its path). The other steps
//! succeed. tests/hooks.rs checks that a hook inherits nothing of vaultd's.
#![allow(clippy::unwrap_used)]

fn main() {
    let mut value = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut value).unwrap();
    if std::env::var("VAULTD_STEP").as_deref() != Ok("create") {
        return;
    }
    let mut fds: Vec<(u32, String)> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?.to_string_lossy().into_owned();
            let kind = target.split(':').next().filter(|k| ["pipe", "socket", "anon_inode"].contains(k));
            Some((fd, kind.map_or(target.clone(), str::to_owned)))
        })
        // The listing's own descriptor, open while it is read.
        .filter(|(_, target)| !(target.starts_with("/proc/") && target.ends_with("/fd")))
        .collect();
    fds.sort();
    let line: Vec<String> = fds.iter().map(|(fd, target)| format!("{fd}={target}")).collect();
    println!("{}", line.join(" "));
}
