"""
The per-boot trail: "why did machine X not boot?"

Every MAC's recent boots, each the ordered events that made it: the DHCP
exchange with the selector that decided and why, the first stage over TFTP
or HTTP, the DHCP of the chain-loaded iPXE, its script and the files after
it.  A boot ends once, with an outcome and one summary log line:

  - C{complete}: the last thing it did worked and nothing followed for
    C{stall_after} seconds (or it was a plain address request);
  - C{failed}: the last transfer of the boot failed (not found, aborted...);
  - C{stalled}: the next step never came, named after what was awaited
    ("offered snponly.efi, no TFTP request within 30 s").

Nothing here reads a clock of its own: event times come from the bus, and
the quiet timers run on the injected reactor, so tests drive it all with
C{task.Clock}.

Memory is bounded under a MAC flood: the boots of at most C{[admin] boots}
MACs are kept (the MAC whose latest boot began longest ago is forgotten
first), at most L{BOOTS_PER_MAC} boots each, each with at most
C{events_per_boot} events (the first ones and the latest ones; the middle is
counted, not kept); client text is truncated.  The address -> MAC map is
bounded too.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from typing import Optional

from twisted.logger import Logger
from zope.interface import implementer

from ownsocket.boot.recent import read_arp_table
from ownsocket.events import IEventObserver

# Phases of a boot, in the order a chain-loading boot goes through them.
DHCP = "dhcp"
FIRST_STAGE = "first-stage"
CHAINED_DHCP = "ipxe-dhcp"
SCRIPT = "script"
FILES = "files"
PHASES = (DHCP, FIRST_STAGE, CHAINED_DHCP, SCRIPT, FILES)

OUTCOMES = ("complete", "failed", "stalled")

#: Transfer results that are not a failure of the boot.
_HARMLESS = ("ok", "size-probe", "size_probe")

#: Longest text kept from any event field (client-controlled file names).
MAX_TEXT = 200

#: Boots kept per MAC (the latest ones).
BOOTS_PER_MAC = 4

# First-stage names that are iPXE: after them a DHCP round must follow.
_IPXE_HINTS = ("ipxe", "kpxe", "snponly", "snp.efi", "undionly")


def _text(value) -> Optional[str]:
    if value is None:
        return None
    value = str(value)
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "..."


def _plain(value):
    """A JSON-safe, bounded copy of one field value."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _text(value)


def normalise_mac(text: str) -> Optional[str]:
    """aa:bb:cc:dd:ee:ff from any usual spelling, or None."""
    digits = "".join(ch for ch in str(text).lower() if ch in "0123456789abcdef")
    cleaned = str(text).lower().replace("-", "").replace(":", "").replace(".", "")
    if len(digits) != 12 or cleaned != digits:
        return None
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def _bare_file(name) -> str:
    """snponly.efi for 'http://10.0.0.1/snponly.efi', '/snponly.efi' or 'snponly.efi'."""
    name = str(name or "")
    if "://" in name:
        name = name.split("://", 1)[1].partition("/")[2]
    return name.lstrip("/")


def _over(file) -> str:
    return "HTTP" if str(file or "").lower().startswith(("http://", "https://")) else "TFTP"


def _looks_like_ipxe(file) -> bool:
    name = _bare_file(file).lower()
    return any(hint in name for hint in _IPXE_HINTS)


def firmware_of(arch: Optional[str]) -> str:
    """A person's name for the firmware behind an architecture label
    (the DHCP service's labels: bios, efi-x64, efi-x64-http, uboot-arm64...)."""
    if not arch or arch in ("none", "unknown"):
        return "unknown"
    label = arch.lower()
    if label.startswith("efi") and label.endswith("http"):
        return "UEFI HTTP"
    if label.startswith("efi"):
        return "UEFI"
    if label.startswith("bios"):
        return "BIOS HTTP" if label.endswith("http") else "BIOS"
    if label.startswith("uboot"):
        return "U-Boot"
    if label == "rpiboot":
        return "Raspberry Pi"
    return arch


def describe(event) -> str:
    """One human line for one event (the CLI and the page show it)."""
    f = event.fields
    service, kind = event.service, event.kind
    if service in ("dhcp", "proxy", "dhcp6"):
        who = {"proxy": "proxy ", "dhcp6": "DHCPv6 "}.get(service, "")
        if kind == "received":
            text = f"{who}{str(f.get('message') or '?').upper()}"
            if f.get("interface"):
                text += f" via {f.get('interface')}"
            if f.get("hostname"):
                text += f" hostname {f.get('hostname')}"
            return text
        if kind == "sent":
            text = f"{who}{str(f.get('message') or '?').upper()}"
            if f.get("address"):
                text += f" {f.get('address')}"
            if f.get("file"):
                text += f" boot {f.get('file')!s}"
            if f.get("selector"):
                text += f" by {f.get('selector')}"
            if f.get("reason"):
                text += f" ({f.get('reason')})"
            if f.get("arch"):
                text += f" [{f.get('arch')}]"
            return text
        if kind == "dropped":
            return f"{who}dropped: {f.get('reason')}"
        if kind == "committed":
            seconds = f.get("seconds")
            ms = f" in {seconds * 1000:.1f} ms" if isinstance(seconds, (int, float)) else ""
            return f"lease {f.get('address')} committed{ms}"
        if kind == "allocation-failed":
            return f"no address in {f.get('subnet')}: {f.get('reason')}"
    if service in ("tftp", "http"):
        proto = service.upper()
        if kind == "started":
            text = f"{proto} {f.get('file')} started"
            details = [f"{key} {f.get(key)}" for key in ("blksize", "windowsize", "size") if f.get(key) is not None]
            return text + (f" ({', '.join(details)})" if details else "")
        if kind == "finished":
            result = f.get("result")
            if result == "ok":
                text = f"{proto} {f.get('file')} sent {f.get('bytes')} bytes"
                if isinstance(f.get("seconds"), (int, float)):
                    text += f" in {f.get('seconds'):.2f} s"
                extras = [f"{key} {f.get(key)}" for key in ("blksize", "windowsize", "retransmits")
                          if f.get(key) is not None]
                return text + (f" ({', '.join(extras)})" if extras else "")
            return f"{proto} {f.get('file')}: " + _failure_words(service, f)
    return f"{service} {kind}"


def _failure_words(service, f) -> str:
    result = str(f.get("result") or "error")
    if result in ("size-probe", "size_probe"):
        return "size probe (the client asked for the size only)"
    if result in ("aborted", "timeout"):
        where = f" at block {f.get('block')}" if f.get("block") is not None and service == "tftp" else ""
        cause = f.get("error") or ("client gone" if result == "aborted" else "no answer from the client")
        return f"{result}{where}: {cause}"
    if result in ("not-found", "not_found"):
        words = "not found"
    elif result == "denied":
        words = "access denied"
    elif result == "refused":
        words = "refused (no room for another transfer)"
    else:
        words = result
    if service == "http" and f.get("status"):
        words = f"{f.get('status')} {words}"
    if f.get("error") and result not in ("not-found", "not_found", "denied"):
        words += f": {f.get('error')}"
    return words


class Entry:
    """One event of one boot, as kept: the event itself (frozen, shared
    with the other observers) and the phase it belongs to.  The JSON copy
    and the human line are made when someone asks, not on the hot path."""

    __slots__ = ("event", "phase")

    def __init__(self, event, phase):
        self.event = event
        self.phase = phase

    @property
    def time(self):
        return self.event.time

    @property
    def service(self):
        return self.event.service

    @property
    def kind(self):
        return self.event.kind

    @property
    def fields(self):
        return {key: _plain(value) for key, value in self.event.fields.items()}

    @property
    def text(self):
        return _text(describe(self.event))


def _bounded(event):
    """The event, or a copy whose long text fields are cut (TFTP/HTTP file
    names come from the client; DHCP options cannot exceed 255 bytes)."""
    fields = event.fields
    if any(isinstance(v, str) and len(v) > MAX_TEXT for v in fields.values()):
        return event._replace(fields={k: _plain(v) for k, v in fields.items()})
    return event


class Boot:
    """One boot of one machine: from its first DISCOVER to its outcome."""

    __slots__ = ("number", "key", "mac", "peer", "started", "last", "ended", "outcome", "summary", "phase",
                 "phases", "head", "tail", "dropped", "arch", "hostname", "address", "selector", "reason",
                 "offered", "last_reply", "last_drop", "first_stage", "script", "files_after", "in_flight",
                 "transfers", "last_transfer", "current_file", "latest_file", "service", "deadline")

    def __init__(self, number, key, mac, peer, time):
        self.number = number
        self.key = key
        self.mac = mac
        self.peer = peer
        self.started = time
        self.last = time
        self.ended = None
        self.outcome = None
        self.summary = None
        self.phase = DHCP
        self.phases = [(DHCP, time)]
        self.head = []
        self.tail = deque()
        self.dropped = 0
        self.arch = None
        self.hostname = None
        self.address = None
        self.selector = None
        self.reason = None
        self.offered = None        # the file of the latest reply that named one
        self.last_reply = None     # message of the latest DHCP reply
        self.last_drop = None
        self.first_stage = None    # dict: file, protocol, result, bytes, ...
        self.script = None
        self.files_after = 0
        self.in_flight = 0
        self.transfers = 0
        self.last_transfer = None  # (service, fields) of the latest finished
        self.current_file = None
        self.latest_file = None
        self.service = None        # dhcp or proxy: who answered
        self.deadline = None       # reactor time at which the boot counts as quiet

    # -- events -----------------------------------------------------------

    def add(self, event, limit):
        entry = Entry(event, self.phase)
        self.last = event.time
        keep_head = max(1, limit // 2)
        if len(self.head) < keep_head:
            self.head.append(entry)
            return
        self.tail.append(entry)
        if len(self.head) + len(self.tail) > limit:
            self.tail.popleft()
            self.dropped += 1

    def entries(self):
        return self.head + list(self.tail)

    def enter(self, phase, time):
        if phase != self.phase:
            self.phase = phase
            self.phases.append((phase, time))

    # -- views ------------------------------------------------------------

    @property
    def file(self):
        """The file the boot is at: the one being sent, else the latest one named."""
        return self.current_file or self.latest_file

    @property
    def firmware(self):
        return firmware_of(self.arch)

    def as_dict(self, now, events=True):
        start = self.started
        phases = []
        for index, (phase, at) in enumerate(self.phases):
            until = self.phases[index + 1][1] if index + 1 < len(self.phases) else (self.ended or now)
            phases.append({"phase": phase, "at": at, "since_start": round(at - start, 3),
                           "seconds": round(until - at, 3)})
        data = {
            "boot": self.number,
            "mac": self.mac,
            "peer": self.peer,
            "address": self.address,
            "hostname": self.hostname,
            "arch": self.arch,
            "firmware": self.firmware,
            "selector": self.selector,
            "reason": self.reason,
            "file": self.file,
            "stage": self.phase,
            "started": self.started,
            "last": self.last,
            "ended": self.ended,
            "elapsed": round((self.ended or now) - start, 3),
            "outcome": self.outcome,
            "summary": self.summary,
            "in_flight": self.in_flight,
            "first_stage": dict(self.first_stage) if self.first_stage else None,
            "script": self.script,
            "files_after_script": self.files_after,
            "phases": phases,
            "events_kept": len(self.head) + len(self.tail),
            "events_dropped": self.dropped,
        }
        if events:
            out = []
            previous = start
            for entry in self.entries():
                item = {"time": entry.time, "since_start": round(entry.time - start, 3),
                        "since_previous": round(entry.time - previous, 3), "phase": entry.phase,
                        "service": entry.service, "kind": entry.kind, "text": entry.text}
                item["fields"] = entry.fields
                out.append(item)
                previous = entry.time
            data["events"] = out
        return data


@implementer(IEventObserver)
class BootTrail:
    """
    Subscribe it to the event bus; ask it for L{boots} and L{boots_of}.

    @param settings: a callable returning the current C{AdminConfig} (boots,
        events_per_boot, stall_after): a reload may change it at any time.
    @param reactor: for the quiet timer (C{callLater}) and C{seconds()}.
    @param on_end: called with each L{Boot} as it ends (metrics count them).
    @param arp_table: address -> MAC, for proxyDHCP where the address was
        given by another server.
    """

    log = Logger()

    def __init__(self, settings, reactor, on_end=None, arp_table=read_arp_table):
        self._settings = settings
        self._limits_of = self  # never a settings object: the first call computes
        self.reactor = reactor
        self.on_end = on_end
        self.arp_table = arp_table
        self._numbers = itertools.count(1)
        self._boots = OrderedDict()      # number -> Boot, oldest first
        self._by_key = OrderedDict()     # key (MAC or "peer:IP") -> deque of Boot, least recent first
        self._mac_of = OrderedDict()     # address -> MAC, from replies seen
        self.evicted = 0
        self._lim = self._limits()
        # Boots that wait for their next step, in the order of their last
        # event, so in deadline order too (stall_after is the same for all):
        # one reactor timer for the earliest, instead of one per boot, keeps
        # a flood of new MACs from churning the reactor's timer heap.
        self._waiting = OrderedDict()    # number -> Boot
        self._call = None

    # -- queries ----------------------------------------------------------

    def __len__(self):
        return len(self._boots)

    def all_boots(self):
        """Every boot kept, newest first."""
        return list(reversed(self._boots.values()))

    def boots_of(self, key):
        """The kept boots of a MAC (any spelling) or of an unknown-MAC peer address, newest first."""
        mac = normalise_mac(key)
        found = self._by_key.get(mac) if mac else None
        if found is None:
            found = self._by_key.get("peer:" + str(key))
        if found is None:
            mac = self._mac_of.get(str(key))
            found = self._by_key.get(mac) if mac else None
        return list(reversed(found)) if found else []

    def current_of(self, key):
        found = self._by_key.get(key)
        return found[-1] if found else None

    def mac_for_peer(self, peer):
        return self._mac_of.get(peer)

    def memory_bound(self):
        """(boots kept, events kept, address map size): what a flood test watches."""
        events = sum(len(b.head) + len(b.tail) for b in self._boots.values())
        return len(self._boots), events, len(self._mac_of)

    def stop(self):
        """Cancel the quiet timer (the server is stopping); boots stay as they are."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for boot in self._waiting.values():
            boot.deadline = None
        self._waiting.clear()

    # -- the observer -----------------------------------------------------

    def observe(self, event):
        service = event.service
        if service in ("dhcp", "proxy", "dhcp6"):
            self._lim = self._limits()
            self._dhcp(event)
        elif service in ("tftp", "http"):
            self._lim = self._limits()
            self._transfer(_bounded(event))

    def _limits(self):
        settings = self._settings()
        if settings is self._limits_of:
            return self._lim  # the same [admin] section (a reload brings a new one)
        self._limits_of = settings
        return (max(1, int(getattr(settings, "boots", 1000))),
                max(2, int(getattr(settings, "events_per_boot", 64))),
                float(getattr(settings, "stall_after", 30.0)))

    def _new_boot(self, key, mac, peer, time, phase=DHCP):
        limit = self._lim[0]
        boot = Boot(next(self._numbers), key, mac, peer, time)
        boot.phase, boot.phases = phase, [(phase, time)]
        self._boots[boot.number] = boot
        history = self._by_key.setdefault(key, deque())
        history.append(boot)
        while len(history) > BOOTS_PER_MAC:
            self._forget(history[0])
        by_key = self._by_key
        by_key.move_to_end(key)
        while len(by_key) > limit:  # forget the MAC that started a boot longest ago
            for old in list(by_key[next(iter(by_key))]):
                self._forget(old)
        return boot

    def _forget(self, boot):
        self._boots.pop(boot.number, None)
        history = self._by_key.get(boot.key)
        if history is not None:
            try:
                history.remove(boot)
            except ValueError:
                pass
            if not history:
                del self._by_key[boot.key]
        self._waiting.pop(boot.number, None)
        boot.deadline = None
        if boot.outcome is None:
            self.evicted += 1

    def _remember_address(self, address, mac):
        limit = max(256, 4 * self._lim[0])
        self._mac_of.pop(address, None)
        self._mac_of[address] = mac
        while len(self._mac_of) > limit:
            self._mac_of.popitem(last=False)

    # -- DHCP -------------------------------------------------------------

    def _dhcp(self, event):
        mac = event.mac
        if not mac:
            return
        kind, fields = event.kind, event.fields
        boot = self.current_of(mac)
        ended = boot is None or boot.outcome is not None
        message = fields.get("message")
        # DHCPv6 publishes no "received": its ADVERTISE stands for the SOLICIT
        starts = (kind == "received" and message in ("discover", "bootp")) or \
            (event.service == "dhcp6" and kind == "sent" and message == "advertise")
        if kind == "received" or starts:
            if starts:
                if ended or boot.phase in (SCRIPT, FILES):
                    if not ended:
                        self._end(boot, restarted=True)
                    boot = self._new_boot(mac, mac, event.peer, event.time)
                elif boot.phase == FIRST_STAGE:
                    ok = boot.first_stage and boot.first_stage.get("result") == "ok"
                    boot.enter(CHAINED_DHCP if ok else DHCP, event.time)
            elif message == "request":
                if ended:
                    boot = self._new_boot(mac, mac, event.peer, event.time)
            elif ended:
                return  # release/inform/decline outside a boot: not a boot
            if fields.get("hostname"):
                boot.hostname = _text(fields.get("hostname"))
        elif ended:
            if kind != "sent":
                return
            boot = self._new_boot(mac, mac, event.peer, event.time)
        if kind == "sent":
            message = fields.get("message")
            boot.last_reply = message
            address = fields.get("address")
            if address:
                boot.address = str(address)
                boot.peer = boot.peer or str(address)
                self._remember_address(str(address), mac)
            if fields.get("arch"):
                boot.arch = _text(fields.get("arch"))
            if fields.get("selector") or fields.get("file"):
                boot.selector = _text(fields.get("selector"))
                boot.reason = _text(fields.get("reason"))
            if fields.get("file"):
                boot.offered = boot.latest_file = _text(fields.get("file"))
            boot.service = event.service
        elif kind == "dropped":
            boot.last_drop = _text(fields.get("reason"))
        boot.add(event, self._lim[1])
        self._arm(boot)

    # -- TFTP / HTTP ------------------------------------------------------

    def _key_for_peer(self, event):
        peer = event.peer
        if event.mac:
            if peer:
                self._remember_address(peer, event.mac)
            return event.mac, event.mac
        if not peer:
            return None, None
        mac = self._mac_of.get(peer)
        if mac is None:
            mac = self.arp_table().get(peer) if self.arp_table else None
            if mac is None:
                mac = self._unique_waiting(event)
            if mac is not None:
                self._remember_address(peer, mac)
        if mac is not None:
            return mac, mac
        return "peer:" + peer, None

    def _unique_waiting(self, event):
        """proxyDHCP without an ARP entry: the one boot that was offered this file and awaits it."""
        wanted = _bare_file(event.fields.get("file"))
        candidates = [b for b in self._boots.values()
                      if b.outcome is None and b.mac and b.phase in (DHCP, CHAINED_DHCP)
                      and _bare_file(b.offered) == wanted and wanted]
        return candidates[0].mac if len(candidates) == 1 else None

    def _transfer(self, event):
        key, mac = self._key_for_peer(event)
        if key is None:
            return
        fields = event.fields
        boot = self.current_of(key)
        if boot is None or boot.outcome is not None:
            # no DHCP seen (proxy without ARP, or after the boot ended)
            boot = self._new_boot(key, mac, event.peer, event.time, FIRST_STAGE)
        boot.peer = event.peer
        if event.kind == "started":
            self._transfer_started(boot, event)
        elif event.kind == "finished":
            self._transfer_finished(boot, event, fields)
        boot.add(event, self._lim[1])
        self._arm(boot)

    def _transfer_started(self, boot, event):
        self._advance(boot, event)
        boot.in_flight += 1
        boot.transfers += 1
        boot.current_file = _text(event.fields.get("file"))

    def _advance(self, boot, event):
        """The phase a new transfer belongs to."""
        first_ok = boot.first_stage is not None and boot.first_stage.get("result") == "ok"
        if boot.phase == DHCP:
            boot.enter(FIRST_STAGE, event.time)
        elif boot.phase == CHAINED_DHCP:
            boot.enter(SCRIPT, event.time)
        elif boot.phase == FIRST_STAGE and first_ok and not self._same_file(boot.first_stage, event):
            # (the same file again is still the first stage: UEFI HTTP boot
            # asks for the size before it downloads)
            boot.enter(FILES, event.time)
        elif boot.phase == SCRIPT and boot.script and boot.last_transfer and \
                boot.last_transfer[1].get("result") == "ok":
            boot.enter(FILES, event.time)

    @staticmethod
    def _same_file(first_stage, event):
        return first_stage is not None and \
            _bare_file(first_stage.get("file")) == _bare_file(event.fields.get("file"))

    def _transfer_finished(self, boot, event, fields):
        boot.latest_file = _text(fields.get("file"))
        if boot.in_flight == 0:
            # refused before it started (not found, denied, no room): no
            # "started" came, but it still is the next phase's transfer
            self._advance(boot, event)
            boot.transfers += 1
        boot.in_flight = max(0, boot.in_flight - 1)
        result = fields.get("result")
        if boot.phase == FIRST_STAGE and (boot.first_stage is None or boot.first_stage.get("result") != "ok"
                                          or self._same_file(boot.first_stage, event)):
            boot.first_stage = {"file": _text(fields.get("file")), "protocol": event.service,
                                "result": _plain(result), "bytes": _plain(fields.get("bytes")),
                                "seconds": _plain(fields.get("seconds")),
                                "blksize": _plain(fields.get("blksize")),
                                "windowsize": _plain(fields.get("windowsize")),
                                "retransmits": _plain(fields.get("retransmits")),
                                "block": _plain(fields.get("block")),
                                "error": _text(fields.get("error")), "status": _plain(fields.get("status"))}
        elif boot.phase == SCRIPT and result == "ok" and boot.script is None:
            boot.script = _text(fields.get("file"))
        elif boot.phase == FILES and result == "ok":
            boot.files_after += 1
        if result not in ("size-probe", "size_probe"):
            boot.last_transfer = (event.service, {key: _plain(value) for key, value in fields.items()})
        if boot.in_flight == 0:
            boot.current_file = None

    # -- endings ----------------------------------------------------------

    def _arm(self, boot):
        """The boot did something: it is quiet stall_after seconds from now (not while a transfer runs)."""
        waiting = self._waiting
        waiting.pop(boot.number, None)
        if boot.in_flight:
            boot.deadline = None
            return
        stall_after = self._lim[2]
        boot.deadline = self.reactor.seconds() + stall_after
        waiting[boot.number] = boot
        if self._call is None:
            self._call = self.reactor.callLater(stall_after, self._sweep)

    def _sweep(self):
        """End every boot whose deadline passed; wait for the next one."""
        self._call = None
        self._lim = self._limits()
        now = self.reactor.seconds()
        waiting = self._waiting
        while waiting:
            number = next(iter(waiting))
            boot = waiting[number]
            if boot.deadline is not None and boot.deadline > now:
                self._call = self.reactor.callLater(boot.deadline - now, self._sweep)
                return
            del waiting[number]
            boot.deadline = None
            if boot.outcome is None and self._boots.get(number) is boot:
                self._end(boot)

    def _end(self, boot, restarted=False):
        """Decide the outcome, log the one summary line, tell on_end."""
        self._waiting.pop(boot.number, None)
        boot.deadline = None
        within = "before the client started over" if restarted else f"within {self._lim[2]:g} s"
        boot.outcome, boot.summary = _conclude(boot, within)
        boot.ended = boot.last if restarted else self.reactor.seconds()
        who = boot.mac or f"{boot.peer} (MAC unknown)"
        phases = ", ".join(f"{phase} +{at - boot.started:.1f} s" for phase, at in boot.phases)
        self.log.info("boot of {who} {outcome} after {elapsed:.1f} s: {summary} [{phases}]",
                      who=who, outcome=boot.outcome, elapsed=boot.last - boot.started,
                      summary=boot.summary, phases=phases, boot_mac=boot.mac,
                      boot_outcome=boot.outcome)
        if self.on_end is not None:
            self.on_end(boot)


def _conclude(boot, within):
    """(outcome, summary) from where the boot got to."""
    last = boot.last_transfer
    if last is not None and last[1].get("result") not in _HARMLESS:
        service, fields = last
        return "failed", f"{service.upper()} {fields.get('file')}: {_failure_words(service, fields)}"
    phase = boot.phase
    if phase in (DHCP, CHAINED_DHCP):
        prefix = "iPXE " if phase == CHAINED_DHCP else ""
        if boot.last_reply is None:
            why = f" (dropped: {boot.last_drop})" if boot.last_drop else ""
            return "stalled", f"{prefix}DHCP request not answered{why}"
        if boot.last_reply == "nak":
            return "stalled", f"{prefix}NAK sent, no new DISCOVER {within}"
        if boot.last_reply in ("offer", "advertise") and boot.service in ("dhcp", "dhcp6"):
            return "stalled", f"{prefix}offered {boot.address} ({boot.offered or 'no file'}), no REQUEST {within}"
        if not boot.offered:
            return "complete", f"address {boot.address} only (no boot file)"
        if not boot.arch or boot.arch in ("none", "unknown"):
            return "complete", f"address {boot.address} (not a network-boot client)"
        return "stalled", f"{prefix}offered {boot.offered}, no {_over(boot.offered)} request {within}"
    if phase == FIRST_STAGE:
        first = boot.first_stage
        if first is None:
            return "stalled", f"first stage {boot.current_file or boot.offered} started, never finished"
        if first.get("result") in ("size-probe", "size_probe"):
            return "stalled", f"{first.get('file')}: size probe only, no transfer {within}"
        if _looks_like_ipxe(first.get("file")):
            return "stalled", f"{first.get('file')} loaded, no DHCP from iPXE {within}"
        return "complete", f"first stage {first.get('file')} loaded"
    # script or files
    parts = []
    if boot.first_stage:
        parts.append(f"{boot.first_stage.get('file')} over {str(boot.first_stage.get('protocol')).upper()}")
    if boot.script:
        parts.append(f"script {boot.script}")
    if boot.files_after:
        parts.append(f"{boot.files_after} file(s) after it")
    if phase == SCRIPT and not boot.script:
        return "stalled", f"script {boot.offered} not fetched {within}"
    return "complete", ", ".join(parts) or "files sent"
