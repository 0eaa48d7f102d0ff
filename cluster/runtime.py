"""One member of a farm: trio around the membership core, the ring and the router.

What runs here (everything that decides is in the sans-I/O modules):

- **Gossip I/O.** One UDP socket for probes and gossip and one TCP listener for
  push-pull full-state exchanges, on the same port, as memberlist does. A task
  reads datagrams, a task runs the core's timers, a task per push-pull. Before
  timers run, queued datagrams are read first: after a stall of the event
  loop, acks waiting in the socket count before the probes time out.
- **Ring.** Rebuilt from the live members (alive and suspect) on every
  membership change; ``cluster/ring.py`` makes it a pure function of that set.
- **Forwarding.** A request for another member's session goes to it as
  ``FWD [hops, cmd, args]`` over a pipelined link per member
  (``cluster/link.py``); a lock that may wait gets a link of its own.
  Errors come back unchanged; a member that cannot be reached gives
  UNAVAILABLE; one shutting down closes its link with BUSY, and what it did
  not run is routed again. Whole-farm commands go to every live member at once.
- **Handoff.** When the ring changes, sessions this member holds but no longer
  owns are sent to their new owners (``HANDOFF``) and removed here. A new
  owner asked for a session it lacks, in a partition it took over less than
  ``TAKE_WINDOW`` seconds ago, first asks the previous owner for it (``TAKE``),
  so a request racing the handoff still finds its session. The rules (who
  took over what, whom to ask, batches, retries) and every timing of
  handoff, joining and leaving are ``cluster/handoff.py``'s.
- **Leaving.** On SIGTERM a member announces it leaves, hands every session to
  the owners of the ring without it, and exits.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import sys
from array import array
from typing import Any, Awaitable, Callable

import trio

from node.commands import RUN_LOCAL, CommandError, Node, routes_map, status_map
from node.config import Config, parse_seed
from node.logs import RateLimitedLog
from node.store import random_id
from protocol.client import NOT_IDEMPOTENT, lock_wait, lock_may_wait
from protocol.codec import FrameDecoder, ProtocolError, frame
from protocol.constants import Cmd, error_name

from . import handoff, peer_wire, router
from .link import LinkDown, PeerLink
from .membership import GossipConfig, Membership, PushPull, SendPacket
from .ring import Ring, ring_for

log = logging.getLogger("msession.cluster")

STREAM_TIMEOUT = 5.0  # a push-pull exchange
UDP_READ = 65536


class MemberLeaving(CommandError):
    """BUSY: the member is shutting down and did not run the request."""


class Cluster:
    def __init__(self, config: Config, node: Node, clock: Callable[[], float]):
        self.config = config
        self.node = node
        self.clock = clock
        self.gossip = GossipConfig()
        self.name = config.name
        self.host = ""
        self.data_port = 0
        self.gossip_port = 0
        self.membership: Membership | None = None
        self.ring: Ring = ring_for([])
        self._links: dict[str, PeerLink] = {}  # one shared link per member
        self._takeovers = handoff.Takeovers()
        self._ready_event = trio.Event()  # set once joined the farm (or given up waiting for seeds)
        self._solo = False  # ready, alone in the ring, nothing arriving: the fast path
        self._moving: dict[bytes, list] = {}  # sessions on their way to a new owner
        self._given = handoff.Given()  # sessions given by TAKE, kept a while
        self._routes: tuple[Ring, dict] | None = None
        self._udp: socket.socket | None = None
        self._tcp: trio.SocketListener | None = None
        self._wake = trio.Event()
        self._handoff_due = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._log = RateLimitedLog(log)
        self.leaving = False
        self.counters = {
            "forwarded": 0, "forward_errors": 0, "refused_hops": 0, "gathers": 0,
            "sessions_handed_off": 0, "sessions_received": 0, "takes": 0, "handoff_errors": 0,
            "view_retries": 0, "locks_not_adopted": 0,
        }
        node.info_providers.append(self._info)

    # -- set-up -----------------------------------------------------------------

    async def open(self, data_addr: tuple[str, int]) -> None:
        """Binds the gossip port (UDP and TCP). SystemExit with one clear line on failure."""
        bind = self.config.bind
        self.data_port = data_addr[1]
        self.host = self.config.advertise or (bind if bind not in ("", "0.0.0.0", "::") else _this_host())
        port = self.config.gossip_port
        for _attempt in range(20 if port == 0 else 1):
            try:
                listeners = await trio.open_tcp_listeners(port, host=bind)
            except OSError as exc:
                raise SystemExit(f"msession: cannot listen for gossip on {bind}:{port} (TCP): {exc.strerror}") from None
            self._tcp = listeners[0]
            for extra in listeners[1:]:
                await extra.aclose()
            chosen = self._tcp.socket.getsockname()[1]
            udp = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind((bind, chosen))
            except OSError as exc:
                udp.close()
                await self._tcp.aclose()
                if port == 0:
                    continue  # the free TCP port is taken for UDP: pick another
                raise SystemExit(f"msession: cannot listen for gossip on {bind}:{port} (UDP): {exc.strerror}") from None
            udp.setblocking(False)
            self._udp = udp
            self.gossip_port = chosen
            break
        else:
            raise SystemExit("msession: found no free gossip port")
        if not self.name:
            self.name = f"{socket.gethostname()}-{self.host}:{self.data_port}"
        meta = {"host": self.host, "port": self.data_port}
        self.membership = Membership(
            self.name, (self.host, self.gossip_port), meta, self.gossip, trio.current_time(), random.Random()
        )
        self.ring = ring_for([self.name])

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        m = self.membership
        assert m is not None, "open() first"
        seeds = []
        for spec in self.config.seeds:
            try:
                addr = parse_seed(spec)
                infos = await trio.socket.getaddrinfo(addr[0], addr[1], type=socket.SOCK_DGRAM)
                seeds.append((infos[0][4][0], addr[1]))
            except (OSError, ValueError) as exc:
                log.warning("seed %s: cannot resolve: %s", spec, exc)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                m.join(seeds, trio.current_time())
                nursery.start_soon(self._read_udp)
                nursery.start_soon(self._timers)
                nursery.start_soon(self._serve_streams)
                nursery.start_soon(self._handoff_loop)
                if seeds:  # (without, join() has joined: _after makes us ready)
                    nursery.start_soon(self._watch_join, [f"{h}:{p}" for h, p in seeds])
                self._after()
                task_status.started()
        finally:
            if self._udp is not None:
                trio.lowlevel.notify_closing(self._udp)
                self._udp.close()
            for link in self._links.values():
                link.close()

    async def _watch_join(self, seeds: list[str]) -> None:
        """Ready once joined; warns if no seed answers; serves alone after
        a while (``handoff.join_deadlines``: a farm's first node may list seeds
        not up yet)."""
        warn_at, alone_at = handoff.join_deadlines(trio.current_time())
        with trio.move_on_at(warn_at):
            await self._ready_event.wait()
        if not self._ready_event.is_set():
            log.warning("none of the seeds %s answers yet; still trying (a farm's first node needs no seeds)", ", ".join(seeds))
        with trio.move_on_at(alone_at):
            await self._ready_event.wait()
        self._become_ready()
        if self.membership.joined:
            log.info("joined the farm: %d members", len(self.membership.live_names()))

    def _become_ready(self) -> None:
        if not self._ready_event.is_set():
            self._ready_event.set()
            self._refresh_fast_path()

    def _refresh_fast_path(self) -> None:
        """``_solo`` by ``handoff.fast_path``, after anything it depends on
        changed: readiness, the ring, the TAKE window (``_timers`` wakes when
        it closes)."""
        self._solo = handoff.fast_path(
            self._ready_event.is_set(), self.ring, self.name, self._takeovers.active(trio.current_time())
        )

    # -- gossip I/O -----------------------------------------------------------

    def _drain_udp(self) -> None:
        m, udp = self.membership, self._udp
        while True:
            try:
                data, src = udp.recvfrom(UDP_READ)
            except BlockingIOError:
                return
            except OSError:  # e.g. ICMP port unreachable reported on a UDP socket
                continue
            m.receive_packet(data, src[:2], trio.current_time())

    async def _read_udp(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self._udp)
            self._drain_udp()
            self._after()

    async def _timers(self) -> None:
        m = self.membership
        window_closes = math.inf
        while True:
            self._drain_udp()  # answers already here count before timeouts fire
            m.tick(trio.current_time())
            self._after()
            if trio.current_time() >= window_closes:
                self._refresh_fast_path()  # the TAKE window closed: the fast path may apply again
            window_closes = self._takeovers.closes_at()
            self._wake = trio.Event()
            with trio.move_on_at(min(m.next_wakeup(), window_closes)):
                await self._wake.wait()

    def _after(self) -> None:
        """Sends what the core queued, logs its notes, applies its events."""
        m = self.membership
        for item in m.take_outgoing():
            if type(item) is SendPacket:
                try:
                    self._udp.sendto(item.data, item.dest)
                except OSError:
                    pass  # a full buffer or an unreachable member: gossip is lossy by design
            elif type(item) is PushPull and self._nursery is not None:
                self._nursery.start_soon(self._push_pull, item)
        for note in m.take_notes():
            self._log.info("gossip: %s", note)
        changed = False
        for kind, member in m.take_events():
            if kind in ("join", "dead", "left", "alive", "reaped"):
                log.info("member %s (%s:%d): %s", member.name, member.addr[0], member.addr[1], kind)
            if kind in ("dead", "left", "reaped"):
                self._forget(member.name, kind == "left")
            changed = True
        if m.conflict:
            raise SystemExit(f"msession: {m.conflict}")
        if changed:
            self._update_ring()
        if m.joined:
            self._become_ready()  # (after the ring: the fast path is decided on the farm's)
        self._wake.set()

    async def _push_pull(self, item: PushPull) -> None:
        m = self.membership
        reply = None
        try:
            with trio.fail_after(STREAM_TIMEOUT):
                stream = await trio.open_tcp_stream(*item.dest)
                async with stream:
                    await stream.send_all(frame(item.data))
                    reply = await _read_frame(stream, self.gossip.max_stream)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError, ProtocolError):
            reply = None
        m.stream_reply(item.dest, reply, trio.current_time(), item.join)
        self._after()

    async def _serve_streams(self) -> None:
        await trio.serve_listeners(self._serve_stream, [self._tcp])

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        m = self.membership
        try:
            peer = stream.socket.getpeername()[:2]
            with trio.fail_after(STREAM_TIMEOUT):
                data = await _read_frame(stream, self.gossip.max_stream)
                reply = m.stream_request(data, peer, trio.current_time())
                self._after()
                await stream.send_all(frame(reply))
        except ProtocolError as exc:  # a length over max_stream
            m.counters["oversize"] += 1
            self._log.info("gossip: push-pull from a peer dropped: %s", exc)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError) as exc:
            m.counters["bad_packets"] += 1  # truncated, too slow, or closed mid-frame
            self._log.info("gossip: push-pull from a peer failed: %s", exc or type(exc).__name__)
        finally:
            await trio.aclose_forcefully(stream)

    # -- the ring ----------------------------------------------------------------

    def _update_ring(self) -> None:
        live = self.membership.live_names()
        if set(live) == set(self.ring.members):
            return
        old, new = self.ring, ring_for(live)
        self.ring = new
        self._takeovers.ring_changed(old, new, self.name, bool(len(self.node.store)), trio.current_time())
        self._refresh_fast_path()
        log.info("ring %s: %d members", new.id, len(new))
        self._handoff_due.set()

    def _forget(self, name: str, left: bool) -> None:
        """Closes the connection to a member that is gone; to one that left,
        once the requests in flight on it have their answers (it answers
        them before it exits)."""
        link = self._links.pop(name, None)
        if link is not None:
            if left:
                link.retire()
            else:
                link.close()

    def _member_addr(self, name: str) -> tuple[str, int] | None:
        member = self.membership.get(name)
        if member is None or type(member.meta) is not dict:
            return None
        host, port = member.meta.get("host"), member.meta.get("port")
        if isinstance(host, bytes):
            host = host.decode()
        if not isinstance(host, str) or type(port) is not int:
            return None
        return host, port

    # -- requests ------------------------------------------------------------------

    def route(self, cmd: int, args: Any, hops: int) -> Callable[[], Awaitable[Any]] | None:
        """None to run the request here now; else an async step giving its answer
        (or ``RUN_LOCAL``). Raises CommandError for a request refused here."""
        if cmd in _SPECIAL:
            return self._special(cmd, args, hops)
        if self._solo:
            return None  # a farm of one: everything is ours (the fast path)
        if not self._ready_event.is_set() and (cmd in router.KEYED or cmd in router.GATHER):
            # Members may already route to us, but our view is not the farm's yet.
            if hops:
                raise CommandError("BUSY", f"member {self.name} is still joining the farm: retry")
            return lambda: self._after_join(cmd, args)
        where, owner = router.plan(cmd, args, hops, self.ring, self.name)
        if where == router.LOCAL:
            take = self._take_first(cmd, args)
            if take is None:
                return None
            if hops == 0:
                return lambda: self._settled(cmd, args, None)
            return lambda: self._take_then_local(*take)
        if where == router.FORWARD:
            if hops == 0:
                return lambda: self._settled(cmd, args, owner)
            return lambda: self.forward(owner, hops + 1, cmd, args)
        if where == router.REFUSE:
            self.counters["refused_hops"] += 1
            raise CommandError("BUSY", f"the farm's view is changing (passed on {hops} times; owner now {owner}): retry")
        return lambda: self.gather(cmd, args)

    def _special(self, cmd: int, args: Any, hops: int):
        if cmd in (Cmd.STATUS, Cmd.ROUTES):
            if args != []:
                raise CommandError("BADARG", f"usage: {Cmd(cmd).name}")
            if cmd == Cmd.ROUTES:
                routes = self.routes()
                return lambda: _value(routes)
            return self.status
        if cmd == Cmd.HANDOFF:
            return lambda: self._receive_handoff(args)
        if cmd == Cmd.TAKE:
            return lambda: self._give(args)
        if hops > 0 or self._solo:
            return None  # an UNIQ forwarded by an older member, or a farm of one: create here
        return lambda: self.uniq(args)

    async def _after_join(self, cmd: int, args: Any) -> Any:
        await self._ready_event.wait()
        where, owner = router.plan(cmd, args, 0, self.ring, self.name)
        if where == router.SCATTER:
            return await self.gather(cmd, args)
        return await self._settled(cmd, args, owner if where == router.FORWARD else None)

    async def _settled(self, cmd: int, args: Any, owner: str | None) -> Any:
        """Runs a request that arrived from a client on its owner (None: here),
        riding out a change of view: a BUSY from the farm means the request
        did not run, so it is routed again by the newer view, for up to
        ``handoff.SETTLE_TIME`` seconds. Clients only see BUSY if the view keeps
        changing longer than that."""
        backoff = handoff.Backoff(trio.current_time(), handoff.SETTLE_TIME)
        while True:
            try:
                if owner is None:
                    take = self._take_first(cmd, args)
                    if take is not None:
                        await self._take(*take)
                        where, owner = router.plan(cmd, args, 0, self.ring, self.name)
                        if where == router.FORWARD:
                            continue  # the view moved on while we fetched it
                    return RUN_LOCAL
                return await self.forward(owner, 1, cmd, args)
            except CommandError as exc:
                delay = backoff.next(trio.current_time()) if exc.name == "BUSY" else None
                if delay is None:
                    raise
            self.counters["view_retries"] += 1
            await trio.sleep(delay)
            where, owner = router.plan(cmd, args, 0, self.ring, self.name)
            if where != router.FORWARD:
                owner = None

    async def forward(self, owner: str, hops: int, cmd: int, args: Any) -> Any:
        self.counters["forwarded"] += 1
        # A lock that may wait holds its connection until granted: it gets one
        # of its own, closed after, so that if our client goes away (and we
        # are cancelled) the owner drops the waiter at once.
        alone = lock_may_wait(cmd, args)
        timeout = self.config.forward_timeout + lock_wait(cmd, args) if alone else self.config.forward_timeout
        return await self.call(owner, Cmd.FWD, peer_wire.fwd_args(hops, cmd, args), timeout, cmd, alone)

    async def call(self, name: str, cmd: int, args: list, timeout: float, inner: int | None = None,
                   alone: bool = False) -> Any:
        """One request to another member over its shared link (``alone``: over
        a link of its own, closed after); its answer, or CommandError with the
        member's error (or UNAVAILABLE)."""
        addr = self._member_addr(name)
        if addr is None:
            raise CommandError("UNAVAILABLE", f"member {name} has no known address")
        if alone:
            link = PeerLink(addr, self._nursery)
            try:
                return await self._over(link, name, cmd, args, timeout, inner)
            finally:
                link.close()
        link = self._links.get(name)
        if link is None or link.addr != addr:
            if link is not None:
                link.close()
            link = self._links[name] = PeerLink(addr, self._nursery)
        return await self._over(link, name, cmd, args, timeout, inner)

    async def _over(self, link: PeerLink, name: str, cmd: int, args: list, timeout: float, inner: int | None) -> Any:
        try:
            resp = await link.call(cmd, args, timeout)
        except LinkDown as exc:
            if exc.busy:  # it is shutting down, and did not run the request: routed again, it goes elsewhere
                raise MemberLeaving("BUSY", f"member {name} is shutting down: retry") from None
            raise self._unreachable(name, inner if inner is not None else cmd, exc.message, exc.sent) from None
        if resp.ok:
            return resp.value
        raise CommandError(error_name(resp.code), resp.message, counted=True)  # counted by the member that ran it

    def _unreachable(self, name: str, cmd: int, message: str, sent: bool) -> CommandError:
        self.counters["forward_errors"] += 1
        maybe = " (it may have run)" if sent and cmd in NOT_IDEMPOTENT else ""
        return CommandError("UNAVAILABLE", f"member {name} could not be reached{maybe}: {message}")

    def release_lock(self, args: Any, key: int) -> None:
        """Unlocks a lock granted to a client that left before hearing of it."""
        sid = router.session_of(args)
        owner = self.ring.owner(sid) if sid is not None else None
        if owner is None or self._nursery is None:
            return

        async def release() -> None:
            with trio.move_on_after(self.config.forward_timeout):
                try:
                    if owner == self.name:
                        self.node.execute(Cmd.SUNLOCK, [sid, key], self.clock())
                    else:
                        await self.forward(owner, 1, Cmd.SUNLOCK, [sid, key])
                except CommandError:
                    pass

        self._nursery.start_soon(release)

    async def gather(self, cmd: int, args: Any) -> Any:
        """Runs a whole-farm command on every live member; one answer."""
        self.counters["gathers"] += 1
        local = self.node.execute(cmd, args, self.clock())  # checks the arguments first
        members = [m for m in self.ring.members if m != self.name]
        answers: list[Any] = [local]
        failed: list[str] = []

        async def ask(member: str) -> None:
            try:
                answers.append(await self.forward(member, router.MAX_HOPS, cmd, args))
            except CommandError as exc:
                failed.append(f"{member}: {exc.message}")

        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(ask, member)
        if failed:
            raise CommandError("UNAVAILABLE", "not every member answered: " + "; ".join(failed))
        return router.merge(cmd, answers)

    async def uniq(self, args: Any) -> Any:
        """A fresh id, unique in the farm: created on the id's owner, which
        refuses an id that is taken (DUPSESSION) and we draw another."""
        length, classname, data = self.node.uniq_args(args)  # the node's checks, and errors
        for _ in range(16):
            sid = random_id(length)
            owner = self.ring.owner(sid)
            create = [sid, classname, data]
            try:
                if owner is None or owner == self.name:
                    take = self._take_first(Cmd.CREATE, create)
                    if take is not None:
                        await self._take(*take)
                    self.node.execute(Cmd.CREATE, create, self.clock())
                else:
                    await self.forward(owner, 1, Cmd.CREATE, create)
            except CommandError as exc:
                if exc.name == "DUPSESSION":
                    continue
                raise
            return sid
        raise CommandError("DUPSESSION", "no unused id found")

    # -- handoff -------------------------------------------------------------

    def _take_first(self, cmd: int, args: Any) -> tuple[bytes, str] | None:
        """``Takeovers.take_first`` for a request about to run here, by our
        clock and store: (session, member to ask for it first) or None."""
        takeovers = self._takeovers
        if not takeovers.previous:
            return None  # nothing taken over (the usual case)
        return takeovers.take_first(cmd, args, trio.current_time(), self._holds)

    def _holds(self, sid: bytes) -> bool:
        return self.node.store.get(sid, self.clock(), touch=False) is not None

    async def _take(self, sid: bytes, previous: str) -> None:
        """Fetches a session we now own from the member that held it.

        Shielded: a state given to us must reach the store even if the client
        that caused the fetch goes away meanwhile. Whom to ask, in what order:
        ``handoff.take_order``. Whoever holds it and no longer owns it gives
        it up."""
        self.counters["takes"] += 1
        with trio.CancelScope(shield=True):
            member = self.membership.get(previous)
            first, others = handoff.take_order(
                previous, member.state if member is not None else None, self.ring.members, self.name
            )
            if first is not None and await self._take_from(first, sid):
                return
            busy: list[CommandError] = []

            async def ask(name: str) -> None:
                try:
                    await self._take_from(name, sid)
                except CommandError as exc:
                    busy.append(exc)

            async with trio.open_nursery() as nursery:
                for name in others:
                    nursery.start_soon(ask, name)
            if busy:
                raise busy[0]

    async def _take_from(self, name: str, sid: bytes) -> bool | None:
        """True if ``name`` gave the session, False if it has none, None if it
        did not answer. Raises BUSY if it still owns it after ``handoff.TAKE_TIMEOUT``."""
        backoff = handoff.Backoff(trio.current_time(), handoff.TAKE_TIMEOUT)
        while True:
            try:
                state = await self.call(name, Cmd.TAKE, [sid], handoff.TAKE_TIMEOUT)
            except CommandError as exc:
                if exc.name == "BUSY" and not isinstance(exc, MemberLeaving):  # its view is behind ours: soon it gives the session up
                    delay = backoff.next(trio.current_time())
                    if delay is None:
                        raise CommandError("BUSY", f"the farm's view is changing ({name} still holds the session): retry") from None
                    await trio.sleep(delay)
                    continue
                self._log.info("asking %s for a session it held failed: %s", name, exc.message)
                return None
            if not state:
                return False
            try:
                self._merge(state, self.clock())
            except ValueError:
                self._log.info("%s gave a malformed session state", name)
                return False
            if self.ring.owner(sid) != self.name:
                self._handoff_due.set()  # our view moved on meanwhile: pass it on
            return True

    async def _take_then_local(self, sid: bytes, previous: str) -> Any:
        await self._take(sid, previous)
        if self.ring.owner(sid) != self.name:
            raise CommandError("BUSY", "the farm's view changed while the session moved: retry")
        return RUN_LOCAL

    async def _give(self, args: Any) -> Any:
        if type(args) is not list or len(args) != 1 or type(args[0]) is not bytes:
            raise CommandError("BADARG", "usage: TAKE session")
        sid = args[0]
        moving = self._moving.pop(sid, None)
        if moving is not None:
            return moving  # on its way there already: the HANDOFF merges the same state
        s = self.node.store.get(sid, self.clock(), touch=False)
        if s is None:
            return self._given.get(sid, trio.current_time())  # the asker may have lost our first answer
        if self.ring.owner(sid) == self.name and not self.leaving:
            # Ours under our view: the asker's view is ahead of ours. Not ours
            # to give yet, and not its to serve: it answers BUSY and retries.
            raise CommandError("BUSY", f"member {self.name} still owns the session in its view")
        state = self.node.export_moving(s)
        self.counters["sessions_handed_off"] += 1
        self._given.add(sid, state, trio.current_time())
        return state

    def _merge(self, state: Any, now: float, returned: bool = False, checked: bool = False) -> bool:
        """``Node.merge_moving``, counting and logging a lock not taken."""
        merged, lock_taken = self.node.merge_moving(state, now, returned, checked)
        if not lock_taken and not returned:  # (ours back from a failed handoff: its lease ended meanwhile)
            self.counters["locks_not_adopted"] += 1
            self._log.info("a lock that came with session %r was not taken: held here by another key, "
                           "or a late copy of one that ended here", state[0])
        return merged

    async def _receive_handoff(self, args: Any) -> Any:
        if type(args) is not list or len(args) != 1 or type(args[0]) is not list:
            raise CommandError("BADARG", "usage: HANDOFF [session state, ...]")
        if self.leaving:
            raise CommandError("BUSY", f"member {self.name} is leaving the farm")
        now, merged, foreign = self.clock(), 0, False
        try:
            for state in args[0]:
                self.node.check_moving(state)  # all of them first: a malformed one merges nothing
        except ValueError:
            raise CommandError("BADARG", "malformed session state in HANDOFF") from None
        for state in args[0]:
            if self._merge(state, now, checked=True):
                merged += 1
                foreign = foreign or self.ring.owner(state[0]) != self.name
        self.counters["sessions_received"] += merged
        if foreign:
            self._handoff_due.set()  # the sender's view was ahead or behind ours: pass them on
        return merged

    async def _handoff_loop(self) -> None:
        while True:
            await self._handoff_due.wait()
            await trio.sleep(handoff.HANDOFF_SETTLE)  # let a burst of membership changes settle into one view
            self._handoff_due = trio.Event()
            if not self.leaving:
                await self.hand_off(self.ring)

    async def hand_off(self, ring: Ring) -> int:
        """Sends every session ``ring`` gives to another member to that member."""
        store, now = self.node.store, self.clock()
        budget = handoff.handoff_budget(self.config.max_frame)
        sent = 0
        held = {s.sid: s for s in store.sessions(now)}
        for owner, sids in handoff.moves(held, ring, self.name).items():
            sized = []  # (sized as they were: each is looked up again below, after the awaits)
            for sid in sids:
                s = held[sid]
                sized.append((sid, handoff.state_size(sid, s.classname, s.data, s.vars)))
            for batch in handoff.batches(sized, budget):
                states = []
                for sid in batch:
                    s = store.get(sid, self.clock(), touch=False)
                    if s is not None:
                        states.append(self.node.export_moving(s))  # gone from here before it exists there
                        self._moving[sid] = states[-1]  # but a TAKE meanwhile still finds it
                if not states:
                    continue
                try:
                    for part in handoff.handoff_requests(states, budget):
                        await self.call(owner, Cmd.HANDOFF, [part], handoff.HANDOFF_TIMEOUT)
                    sent += len(states)
                    self.counters["sessions_handed_off"] += len(states)
                except CommandError as exc:
                    self.counters["handoff_errors"] += 1
                    self._log.info("handing %d sessions to %s failed (kept here): %s", len(states), owner, exc.message)
                    for state in states:
                        if self._moving.get(state[0]) is state:  # not TAKEn meanwhile
                            self._merge(state, self.clock(), returned=True)
                    self._handoff_due.set()  # again, with the view of then
                    break
                finally:
                    for state in states:
                        if self._moving.get(state[0]) is state:
                            del self._moving[state[0]]
        if sent:
            log.info("handed %d sessions to their new owners", sent)
        return sent

    async def leave(self) -> None:
        """Announces we leave, hands every session to the others, lets gossip
        carry it; timed by ``handoff.Leave``."""
        m = self.membership
        self.leaving = True
        m.leave(trio.current_time())
        self._after()
        others = m.live_names()  # (we have left: not among them)
        if others:
            self.ring = ring_for(others)  # from now on we forward everything
            self._refresh_fast_path()
        plan = handoff.Leave(trio.current_time())
        # The others should know before sessions arrive.
        while (wait := plan.announcing(trio.current_time(), m.leave_done())) is not None:
            await trio.sleep(wait)
        while True:
            others = m.live_names()
            if not plan.hand_off(trio.current_time(), len(others), len(self.node.store)):
                break
            await self.hand_off(ring_for(others))
            await trio.sleep(plan.pause(len(self.node.store)))
        left_behind = len(self.node.store) + len(self._moving)
        if left_behind:
            log.warning("left the farm with %d sessions not handed on", left_behind)

    # -- status ----------------------------------------------------------------

    def routes(self) -> dict:
        """The ring as a table a client can route by (see PROTOCOL.md, ROUTES)."""
        ring = self.ring
        cached = self._routes
        if cached is not None and cached[0] is ring:
            return cached[1]
        index = {name: i for i, name in enumerate(ring.members)}
        members = []
        for name in ring.members:
            addr = self._member_addr(name)
            members.append([name, f"{addr[0]}:{addr[1]}" if addr else ""])
        owners = array("H", [index[o] for o in ring.owners])
        if sys.byteorder == "little":
            owners.byteswap()  # big-endian on the wire
        out = routes_map(ring.id, len(ring.owners), members, owners.tobytes())
        self._routes = (ring, out)
        return out

    async def status(self) -> dict:
        m = self.membership
        counts: dict[str, int | None] = {self.name: self.node.store.count(self.clock())}

        async def ask(name: str) -> None:
            counts[name] = None
            with trio.move_on_after(1.0):
                try:
                    counts[name] = await self.forward(name, router.MAX_HOPS, Cmd.COUNT, [])
                except CommandError:
                    pass

        live = set(self.ring.members)
        async with trio.open_nursery() as nursery:
            for name in live - {self.name}:
                nursery.start_soon(ask, name)
        summary = self.ring.summary()["members"]
        members = []
        for member in m.members():
            addr = self._member_addr(member.name)
            share = summary.get(member.name, {"partitions": 0, "share": 0.0})
            members.append({
                "name": member.name,
                "node": f"{addr[0]}:{addr[1]}" if addr else None,
                "gossip": f"{member.addr[0]}:{member.addr[1]}",
                "state": member.state,
                "incarnation": member.incarnation,
                "partitions": share["partitions"],
                "share": share["share"],
                "sessions": counts.get(member.name) if member.name in live else None,
            })
        return status_map(
            self.name, f"{self.host}:{self.data_port}", cluster=True, gossip=f"{self.host}:{self.gossip_port}",
            ring=self.ring.id, partitions=len(self.ring.owners), health=m.health, members=members,
        )

    def _info(self) -> dict:
        m = self.membership
        out = {f"cluster_{k}": v for k, v in self.counters.items()}
        if m is not None:
            out["cluster_members"] = len(m.live_names())
            out.update({f"gossip_{k}": v for k, v in m.counters.items()})
        return out


_SPECIAL = frozenset({Cmd.STATUS, Cmd.ROUTES, Cmd.HANDOFF, Cmd.TAKE, Cmd.UNIQ})


async def _value(value: Any) -> Any:
    return value


async def _read_frame(stream: trio.SocketStream, limit: int) -> bytes:
    """One push-pull frame: protocol/codec.py's framing, at most ``limit`` bytes
    (``ProtocolError`` above it; ``ValueError`` if the peer closes mid-frame)."""
    decoder = FrameDecoder(limit)
    while (body := decoder.next_frame()) is None:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ValueError("connection closed mid-frame")
        decoder.feed(chunk)
    return body


def _this_host() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"

