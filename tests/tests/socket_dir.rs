//! Outside systemd nobody creates vaultd's runtime directory: vaultd does, with
//! the least access its agent socket needs, and says what to do next only once
//! both sockets listen.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use vault_tests::{Daemon, Options};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_missing_socket_directory_is_created_searchable_only_as_far_as_the_agent_socket_is_open() {
    for (config, want) in [(None, 0o700), (Some("agent_socket_mode = \"0666\"\n"), 0o711)] {
        let mut d = Daemon::new(Options { config: config.map(str::to_owned), ..Options::default() });
        let run = d.dir.path().join("run/vaultd");
        d.agent_socket = run.join("agent.sock");
        d.admin_socket = run.join("admin.sock");
        d.launch();
        assert_eq!(mode(&run), want, "{config:?}");
        assert_eq!(mode(&d.admin_socket), 0o600);
        d.init();
        // The hint comes after the sockets listen, so a bind error is never preceded by it.
        let log = d.log();
        let listening = log.find("listening").unwrap();
        let hint = log.find("run `vaultctl init`").unwrap();
        assert!(listening < hint, "{log}");
    }
}
