//! The one sshd configuration the test hosts run: the sandbox's sshd on a
//! loopback port and each fleet host's sshd in its namespace.

use std::net::IpAddr;
use std::path::Path;

/// Where an sshd listens and where its files are.
pub struct SshdFiles<'a> {
    pub listen: IpAddr,
    pub port: u16,
    pub host_key: &'a Path,
    pub authorized_keys: &'a Path,
    pub pid_file: &'a Path,
}

/// `sshd_config` for a test host: key logins only, forwarding of the Docker
/// socket allowed, enough sessions for several instances at once. A key's
/// `environment="PATH=…"` option is honoured, so that a test can play a host that
/// lacks a tool.
pub fn sshd_config(f: &SshdFiles) -> String {
    format!(
        "Port {port}\n\
         ListenAddress {listen}\n\
         HostKey {host_key}\n\
         AuthorizedKeysFile {authorized}\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         PidFile {pid}\n\
         AllowTcpForwarding yes\n\
         AllowStreamLocalForwarding yes\n\
         StreamLocalBindUnlink yes\n\
         MaxSessions 50\n\
         MaxStartups 100\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         UseDNS no\n\
         PermitUserEnvironment PATH\n\
         LogLevel INFO\n\
         Subsystem sftp internal-sftp\n",
        port = f.port,
        listen = f.listen,
        host_key = f.host_key.display(),
        authorized = f.authorized_keys.display(),
        pid = f.pid_file.display(),
    )
}
