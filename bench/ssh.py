"""OpenSSH ``ssh -L`` port forwarding as a second peer for the TCP tunnel (issue 16).

A private ``sshd`` on 127.0.0.1 (a free port, ``-D -e -f`` a config in a temporary
directory: its own generated host key, one authorized key, ``UsePAM no``, only local
forwarding allowed) and ``ssh -N -L 127.0.0.1:PORT:127.0.0.1:SINK`` logged in with the
generated client key (``-F /dev/null``, batch mode, the host key pinned). The forwarded
bytes cross one SSH connection: encrypted and MACed with the cipher the two negotiate
by default (``cipher`` says which), which is the work an ``ssh -L`` user pays for.

Without ``sshd`` or ``ssh`` (``apt-get install openssh-server openssh-client``) the path
is skipped with :func:`find_openssh`'s reason, as the nginx path is without nginx.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.proc import LineChild, descendants, free_port

__all__ = ["SshTunnel", "find_openssh", "openssh_version"]

SSHD_SEARCH: Final = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
# sshd running as root needs its privilege separation directory (the service makes it).
PRIVSEP_DIR: Final = Path("/run/sshd")

SSHD_CONFIG: Final = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {tmp}/host_ed25519
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys
AllowUsers {user}
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowTcpForwarding local
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
StrictModes no
LogLevel INFO
"""


def find_openssh() -> tuple[str, str] | str:
    """(sshd, ssh) as absolute paths (sshd re-executes itself by it), or why not."""
    sshd = shutil.which("sshd") or next(
        (path for path in SSHD_SEARCH if os.access(path, os.X_OK)), None
    )
    ssh = shutil.which("ssh")
    if sshd is None or ssh is None:
        missing = " and ".join(n for n, p in (("sshd", sshd), ("ssh", ssh)) if p is None)
        return (
            f"{missing} not found; install them from the OS packages "
            "(apt-get install openssh-server openssh-client) to run the ssh -L path"
        )
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        try:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            return f"sshd needs {PRIVSEP_DIR} and it cannot be made: {exc}"
    return str(Path(sshd).absolute()), ssh


def openssh_version(ssh: str) -> str:
    """``ssh -V`` says e.g. ``OpenSSH_9.2p1 Debian-2+deb12u6, OpenSSL 3.0.15 ...`` (stderr)."""
    try:
        done = subprocess.run(  # our own argv, no shell
            [ssh, "-V"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (done.stderr or done.stdout).strip().split(",", 1)[0]


def _keygen(path: Path) -> str:
    """A new ed25519 key pair at ``path`` (no passphrase); returns the public key line."""
    subprocess.run(  # our own argv, no shell
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text("utf-8").strip()


@dataclass
class SshTunnel:
    """A private ``sshd`` + ``ssh -N -L`` to ``sink_port``; :meth:`start` returns the local port."""

    directory: Path
    sink_port: int
    sshd_binary: str
    ssh_binary: str
    server: LineChild | None = None
    client: LineChild | None = None
    port: int = 0
    cipher: str = ""

    async def start(self, attempts: int = 3) -> int:
        tmp = self.directory / "ssh"
        tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        host_key = await asyncio.to_thread(_keygen, tmp / "host_ed25519")
        client_key = await asyncio.to_thread(_keygen, tmp / "client_ed25519")
        (tmp / "authorized_keys").write_text(client_key + "\n", "utf-8")
        user = getpass.getuser()
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}  # no agent keys
        last = ""
        for _ in range(attempts):  # sshd cannot bind port 0: retry a port lost to a race
            ssh_port, self.port = free_port(), free_port()
            config = tmp / "sshd_config"
            config.write_text(SSHD_CONFIG.format(port=ssh_port, tmp=tmp, user=user), "utf-8")
            (tmp / "known_hosts").write_text(f"[127.0.0.1]:{ssh_port} {host_key}\n", "utf-8")
            try:
                self.server = LineChild(
                    "sshd", [self.sshd_binary, "-D", "-e", "-f", str(config)], env
                )
                await self.server.start(r"Server listening on 127\.0\.0\.1 port")
                self.client = LineChild(
                    "ssh -L",
                    [
                        self.ssh_binary, "-F", "/dev/null", "-N", "-v",
                        "-o", "BatchMode=yes",
                        "-o", "ExitOnForwardFailure=yes",
                        "-o", "StrictHostKeyChecking=yes",
                        "-o", f"UserKnownHostsFile={tmp / 'known_hosts'}",
                        "-o", "IdentitiesOnly=yes",
                        "-i", str(tmp / "client_ed25519"),
                        "-p", str(ssh_port),
                        "-L", f"127.0.0.1:{self.port}:127.0.0.1:{self.sink_port}",
                        f"{user}@127.0.0.1",
                    ],
                    env,
                )  # fmt: skip
                await self.client.start(r"Entering interactive session")
            except RuntimeError as exc:
                last = str(exc)
                await self.stop()
                if "in use" not in last:
                    break
                continue
            self.cipher = self._negotiated_cipher()
            return self.port
        raise RuntimeError(f"ssh -L did not start: {last}")

    def _negotiated_cipher(self) -> str:
        assert self.client is not None
        for line in self.client.log_lines:
            if match := re.search(r"kex: client->server cipher: (\S+) MAC: (\S+)", line):
                mac = match.group(2)
                return match.group(1) + ("" if mac == "<implicit>" else f" + {mac}")
        return "unknown"

    def processes(self) -> dict[str, int | None]:
        """ssh, the sshd listener and the connection's sshd processes as they are now.

        The connection's processes (the privileged monitor and the post-authentication
        child that does the crypto) are forked around the login, after the client says it
        is ready: call this again once a forwarded connection went through.
        """
        pids: dict[str, int | None] = {
            "ssh": self.client.pid if self.client else None,
            "sshd": self.server.pid if self.server else None,
        }
        if self.server is not None and self.server.pid is not None:
            for i, pid in enumerate(descendants(self.server.pid)):
                pids[f"sshd_session_{i}"] = pid
        return pids

    def failure_detail(self) -> str:
        return "\n".join(
            f"{c.name} output:\n{c.log_tail(10)}" for c in (self.client, self.server) if c
        )

    async def stop(self) -> None:
        for child in (self.client, self.server):
            if child is not None:
                await child.stop()
