"""A 3-server ZooKeeper ensemble whose quorum links pass through proxies the test controls, so
one server can be cut off *silently* from the others (nothing forwarded, nothing closed) while
its clients stay connected to it.

Layout (ZooKeeper 3.8): each server has a zoo.cfg of its own. Its own `server.N` line names its
real peer and election ports on the wildcard address; the lines of the *other* servers name a
proxy for that ordered (from, to) pair, one for the peer port and one for the election port.
So every connection a server opens to another one passes through the proxy of that pair:

- peer port: a follower connects to the leader (`Learner.connectToLeader`, with the address of
  its own configuration: `QuorumPeer.findLeader` reads the voting view);
- election port: `QuorumCnxManager.initiateConnection` connects to the address in the voting
  view, and sends an `InitialMessage` announcing its own election address. A server receiving a
  connection from a smaller id drops it and connects back (`handleConnection`) to the announced
  address, unless `InitialMessage.parse` skipped it as a wildcard address
  (`isWildcardAddress`): then `connectOne(sid)` uses the receiver's own view, the proxy. That is
  why each server's own line uses 0.0.0.0.

`isolate(member)` puts every proxy from or to that member in `silent` mode (see
`nemesis.proxy.Proxy`: bytes already read are held, connections stay open), `heal()` forwards
again.
"""

from __future__ import annotations

from pathlib import Path

from nemesis.proxy import Proxy
from servers import ZkEnsemble, ZkMember


class PartitionedZkEnsemble(ZkEnsemble):
    """`ZkEnsemble` with proxied quorum links; `sync_limit` overrides the members' syncLimit."""

    def __init__(
        self, tmpdir: Path, size: int = 3, *, sync_limit: int = 10, **member_options: int
    ) -> None:
        if size < 2:
            raise ValueError("a partition needs an ensemble")
        super().__init__(tmpdir, size=size, **member_options)
        self.sync_limit = sync_limit
        #: (from sid, to sid) -> (peer proxy, election proxy)
        self.links: dict[tuple[int, int], tuple[Proxy, Proxy]] = {}
        for src in self.members:
            for dst in self.members:
                if src is dst:
                    continue
                assert dst.quorum_ports is not None
                peer, election = dst.quorum_ports
                self.links[src.sid, dst.sid] = (
                    Proxy(f"127.0.0.1:{peer}"),
                    Proxy(f"127.0.0.1:{election}"),
                )
        for m in self.members:
            m.servers = self._servers_for(m)
            m.extra_config.append(f"syncLimit={sync_limit}")  # the last one read wins

    def _servers_for(self, member: ZkMember) -> str:
        lines = []
        for other in self.members:
            if other is member:
                assert other.quorum_ports is not None
                peer, election = other.quorum_ports
                lines.append(f"server.{other.sid}=0.0.0.0:{peer}:{election}")
            else:
                peer_proxy, election_proxy = self.links[member.sid, other.sid]
                lines.append(
                    f"server.{other.sid}=127.0.0.1:{peer_proxy.port}:{election_proxy.port}"
                )
        return "\n".join(lines)

    @property
    def sync_bound(self) -> float:
        """syncLimit * tickTime, in seconds."""
        return self.sync_limit * self.members[0].tick_ms / 1000

    def follower(self) -> ZkMember:
        for m in self.live_members():
            if m.mode() == "follower":
                return m
        raise RuntimeError(f"no follower among live members of {self!r}")

    def _set(self, member: ZkMember | None, mode: str) -> None:
        for (src, dst), proxies in self.links.items():
            if member is None or member.sid in (src, dst):
                for proxy in proxies:
                    proxy.set_mode(mode)

    def isolate(self, member: ZkMember) -> None:
        """Cut `member` off from every other server, silently; its clients stay connected."""
        self._set(member, "silent")

    def heal(self) -> None:
        self._set(None, "forward")

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            for proxies in self.links.values():
                for proxy in proxies:
                    proxy.close()
