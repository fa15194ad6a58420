"""HCCL rank tables: who is who in an Ascend data-parallel job.

Two formats are read:
- **v1** (`hccl_tools` output, HCCL template 1, versions 1.0 and 1.2): `server_list` →
  `device` entries that carry their own `rank_id`. Version 1.2 (A3) adds fields
  (`super_device_id`, `host_ip`, ports...) that say nothing about rank placement; unknown
  fields are ignored.
- **v0** (the ModelArts template `jobstart_hccl.json`, HCCL template 2): `group_list` →
  `instance_list` → `devices`, without rank ids. Ranks are handed out over groups → instances
  sorted by the integer suffix of `pod_name` (so `job-pod-10` comes after `job-pod-2`) →
  devices in table order.

Every value in both formats is a string. The platform writes the table while the job starts:
`status` goes `initializing` → `completed`, and `wait_completed` polls with a timeout (the
public readers wait forever, which turns a broken launch into a hung job).

`locate(table, environ)` finds this process's rank and checks it against what the launcher
exported (`RANK_ID`, `RANK_SIZE`, `DEVICE_ID`, `ASCEND_DEVICE_ID`): a contradiction is a
`UserError` naming the variable, its value and what the table says, because a wrong rank
silently corrupts data sharding and gradient averaging.

Pure Python, no MindSpore. Debug CLI: `python -m modelarts.rank_table FILE [--timeout S]`.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from src.errors import UserError

logger = logging.getLogger(__name__)

#: The file ModelArts writes into the folder that RANK_TABLE_FILE may name.
MODELARTS_TABLE_NAME = "jobstart_hccl.json"
COMPLETED = "completed"
DEFAULT_POLL_S = 0.2


class RankTableNotReady(UserError):
    """The table is missing, unreadable or half written. The platform may still be writing it,
    so `wait_completed` reads it again until its timeout. `reason` is the message without the
    path."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"rank table {path} {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class RankEntry:
    """One rank: the device it drives and where it sits. `device_id` is the *physical* id the
    table gives; the logical id MindSpore wants comes from `locate`."""
    rank_id: int
    node_rank: int
    local_rank: int
    server_id: str
    pod_name: Optional[str]
    device_id: int
    device_ip: str


@dataclass(frozen=True)
class Server:
    """One node (v1 server / v0 instance) with the global ranks on it, in local-rank order."""
    node_rank: int
    server_id: str
    pod_name: Optional[str]
    host_ip: Optional[str]
    ranks: Tuple[int, ...]


@dataclass(frozen=True)
class RankTable:
    path: str
    format: str                 # "v1" (server_list), "v0" (ModelArts group_list)
    version: Optional[str]      # the table's own "version" (v1 only)
    status: str
    servers: Tuple[Server, ...]
    ranks: Tuple[RankEntry, ...]  # ranks[i].rank_id == i

    @property
    def rank_size(self) -> int:
        return len(self.ranks)

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    def server_ranks(self, server: Server) -> List[RankEntry]:
        return [self.ranks[r] for r in server.ranks]

    def as_dict(self) -> Dict[str, Any]:
        return {
            "file": self.path,
            "format": self.format,
            "version": self.version,
            "status": self.status,
            "rank_size": self.rank_size,
            "server_count": len(self.servers),
            "ranks": [{"rank_id": e.rank_id, "server_id": e.server_id, "pod_name": e.pod_name,
                       "device_id": e.device_id, "device_ip": e.device_ip,
                       "local_rank": e.local_rank, "node_rank": e.node_rank}
                      for e in self.ranks],
        }


@dataclass(frozen=True)
class Placement:
    """Where this process sits according to the table and the launcher's variables."""
    rank: RankEntry
    device_id: int          # logical device id: what ms.set_context / ms.set_device want
    local_world_size: int
    num_nodes: int
    rank_size: int


# --------------------------------------------------------------------------- reading


def resolve_path(path: str) -> str:
    """The table file that `RANK_TABLE_FILE` names: the file itself, or inside a folder
    `jobstart_hccl.json`, else the folder's only `*.json`."""
    if not os.path.isdir(path):
        return path
    preferred = os.path.join(path, MODELARTS_TABLE_NAME)
    if os.path.isfile(preferred):
        return preferred
    candidates = sorted(glob.glob(os.path.join(path, "*.json")))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise RankTableNotReady(
            path, f"is a folder without {MODELARTS_TABLE_NAME} or any other *.json file")
    names = ", ".join(os.path.basename(c) for c in candidates)
    raise UserError(f"rank table folder {path} holds {len(candidates)} *.json files ({names}) "
                    f"and no {MODELARTS_TABLE_NAME}; point RANK_TABLE_FILE at one of them")


def load(path: str) -> RankTable:
    """Read and parse a table once, without waiting. A folder is resolved by `resolve_path`."""
    path = resolve_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise RankTableNotReady(path, "does not exist (check RANK_TABLE_FILE)") from None
    except OSError as e:
        raise RankTableNotReady(path, f"cannot be read: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RankTableNotReady(path, f"is not valid JSON ({e})") from None
    return parse(data, path)


def parse(data: Any, path: str) -> RankTable:
    """Parse a decoded table. A table whose status is not "completed" comes back without ranks
    and unchecked: the platform is still writing it."""
    if not isinstance(data, dict):
        raise UserError(f"rank table {path}: expected a JSON object, got {type(data).__name__}")
    # hccl_tools and ModelArts always write a status; a hand-made table without one is final.
    status = str(data.get("status", COMPLETED))
    is_v1, is_v0 = "server_list" in data, "group_list" in data
    fmt = "v1" if is_v1 and not is_v0 else "v0" if is_v0 and not is_v1 else "unknown"
    version = str(data.get("version", "1.0")) if fmt == "v1" else None
    if status != COMPLETED:
        return RankTable(path, fmt, version, status, (), ())
    if fmt == "unknown":
        raise UserError(f"rank table {path} has {'both' if is_v1 else 'neither'} server_list "
                        f"(v1.0 / 1.2) {'and' if is_v1 else 'nor'} group_list (ModelArts "
                        f"{MODELARTS_TABLE_NAME}): it must have one of them")
    servers, ranks = (_parse_v1 if fmt == "v1" else _parse_v0)(data, path)
    return RankTable(path, fmt, version, status, tuple(servers), tuple(ranks))


def _need(obj: Any, key: str, where: str, path: str, kind: type) -> Any:
    """obj[key], which must be a list (kind=list) or a string (kind=str; hand-written tables
    sometimes use JSON numbers, which are accepted too)."""
    if not isinstance(obj, dict) or key not in obj:
        raise UserError(f"rank table {path}: {where} has no {key!r}")
    value = obj[key]
    allowed = (list,) if kind is list else (str, int)
    if not isinstance(value, allowed) or isinstance(value, bool):
        raise UserError(f"rank table {path}: {where}.{key} must be a "
                        f"{'list' if kind is list else 'string'}, got {value!r}")
    return value


def _as_int(value: Any, where: str, path: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value).strip())
    except ValueError:
        raise UserError(f"rank table {path}: {where} = {value!r} is not an integer") from None


def _check_count(data: Mapping, key: str, actual: int, where: str, path: str) -> None:
    if key in data and _as_int(data[key], f"{where}.{key}", path) != actual:
        raise UserError(f"rank table {path}: {where}.{key} says {data[key]} but the table "
                        f"lists {actual}")


def _device_id(device: Any, where: str, seen: set, server: str, path: str) -> int:
    device_id = _as_int(_need(device, "device_id", where, path, str), where + ".device_id", path)
    if device_id in seen:
        raise UserError(f"rank table {path}: device_id {device_id} appears twice on {server}")
    seen.add(device_id)
    return device_id


def _parse_v1(data: Mapping, path: str) -> Tuple[List[Server], List[RankEntry]]:
    server_list = _need(data, "server_list", "the table", path, list)
    if not server_list:
        raise UserError(f"rank table {path}: server_list is empty")
    _check_count(data, "server_count", len(server_list), "the table", path)
    by_rank: Dict[int, RankEntry] = {}
    servers = []
    for node_rank, server in enumerate(server_list):
        where = f"server_list[{node_rank}]"
        server_id = str(_need(server, "server_id", where, path, str))
        if any(s.server_id == server_id for s in servers):
            raise UserError(f"rank table {path}: server_id {server_id} appears twice")
        devices = _need(server, "device", where, path, list)
        if not devices:
            raise UserError(f"rank table {path}: {where} (server {server_id}) has no device")
        ranks = []
        seen: set = set()
        for local_rank, device in enumerate(devices):
            dwhere = f"{where}.device[{local_rank}]"
            device_id = _device_id(device, dwhere, seen, f"server {server_id}", path)
            rank_id = _as_int(_need(device, "rank_id", dwhere, path, str), dwhere + ".rank_id",
                              path)
            if rank_id in by_rank:
                other = by_rank[rank_id]
                raise UserError(f"rank table {path}: rank_id {rank_id} is given to device "
                                f"{other.device_id} of server {other.server_id} and to device "
                                f"{device_id} of server {server_id}")
            by_rank[rank_id] = RankEntry(rank_id, node_rank, local_rank, server_id, None,
                                         device_id, str(device.get("device_ip", "")))
            ranks.append(rank_id)
        host_ip = server.get("host_ip")
        servers.append(Server(node_rank, server_id, None,
                              str(host_ip) if host_ip is not None else None, tuple(ranks)))
    missing = sorted(set(range(len(by_rank))) - set(by_rank))
    if missing:
        raise UserError(f"rank table {path}: rank ids must be 0..{len(by_rank) - 1}, but "
                        f"{', '.join(map(str, missing))} {'is' if len(missing) == 1 else 'are'} "
                        f"missing")
    return servers, [by_rank[r] for r in range(len(by_rank))]


_POD_SUFFIX = re.compile(r"(\d+)$")


def _pod_index(pod_name: str, path: str) -> int:
    m = _POD_SUFFIX.search(pod_name)
    if not m:
        # HCCL orders instances by this number; without it we cannot reproduce its ranks.
        raise UserError(f"rank table {path}: pod_name {pod_name!r} does not end in an instance "
                        f"number")
    return int(m.group(1))


def _parse_v0(data: Mapping, path: str) -> Tuple[List[Server], List[RankEntry]]:
    groups = _need(data, "group_list", "the table", path, list)
    if not groups:
        raise UserError(f"rank table {path}: group_list is empty")
    _check_count(data, "group_count", len(groups), "the table", path)
    servers: List[Server] = []
    ranks: List[RankEntry] = []
    for g, group in enumerate(groups):
        gwhere = f"group_list[{g}]"
        instances = _need(group, "instance_list", gwhere, path, list)
        _check_count(group, "instance_count", len(instances), gwhere, path)
        pods = [str(_need(inst, "pod_name", f"{gwhere}.instance_list[{i}]", path, str))
                for i, inst in enumerate(instances)]
        group_devices = 0
        for pod, inst in sorted(zip(pods, instances), key=lambda pi: _pod_index(pi[0], path)):
            where = f"{gwhere} instance {pod}"
            if any(s.pod_name == pod for s in servers):
                raise UserError(f"rank table {path}: pod_name {pod} appears twice")
            server_id = str(_need(inst, "server_id", where, path, str))
            devices = _need(inst, "devices", where, path, list)
            if not devices:
                raise UserError(f"rank table {path}: {where} has no device")
            node_rank = len(servers)
            on_server = []
            seen: set = set()
            for local_rank, device in enumerate(devices):
                device_id = _device_id(device, f"{where} devices[{local_rank}]", seen,
                                       f"pod {pod}", path)
                entry = RankEntry(len(ranks), node_rank, local_rank, server_id, pod, device_id,
                                  str(device.get("device_ip", "")))
                ranks.append(entry)
                on_server.append(entry.rank_id)
            group_devices += len(devices)
            servers.append(Server(node_rank, server_id, pod, None, tuple(on_server)))
        _check_count(group, "device_count", group_devices, gwhere, path)
    return servers, ranks


WAIT_REPORT_S = 30.0


def wait_completed(path: str, timeout: float, poll: float = DEFAULT_POLL_S) -> RankTable:
    """Poll the table until its status is "completed" and return it parsed.

    While waiting, a file that is missing, half written (invalid JSON) or still
    "initializing" is read again every `poll` seconds; whichever of these is still true after
    `timeout` seconds becomes a `UserError` naming the file. A completed table that is wrong
    fails at once: waiting would not fix it."""
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
    next_report = started  # a silent job looks hung to ModelArts: say so at once, then every 30 s
    while True:
        try:
            table = load(path)
            if table.completed:
                if next_report > started:
                    logger.info("rank table %s completed after %.0f s", table.path,
                                time.monotonic() - started)
                return table
            where, reason = table.path, f"still has status {table.status!r}"
        except RankTableNotReady as e:
            where, reason = e.path, e.reason
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            raise UserError(f"rank table {where} not ready after {timeout:g}s: it {reason} "
                            f"(raise rank_table_timeout if the platform is slow to write it)")
        if now >= next_report:
            logger.info("waiting for rank table %s: it %s (%.0f s left of rank_table_timeout)",
                        where, reason, remaining)
            next_report = now + WAIT_REPORT_S
        time.sleep(min(poll, remaining))


# --------------------------------------------------------------------------- locating


def env_int(environ: Mapping[str, str], name: str) -> Optional[int]:
    """An integer environment variable, None when unset or empty; garbage is a UserError."""
    value = environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def _visible_devices(environ: Mapping[str, str]) -> Optional[List[int]]:
    """Physical ids of the NPUs mapped into this container, in logical order."""
    value = environ.get("ASCEND_VISIBLE_DEVICES", "").strip()
    try:
        return [int(v) for v in value.split(",") if v.strip()] or None
    except ValueError:
        return None   # e.g. "all": there is no mapping to read


def _device_names(entry: RankEntry, table: RankTable, environ: Mapping[str, str]) -> List[int]:
    """The ids a launcher may use for this rank's device: the table's physical id, the
    device's position among its server's devices (its logical id inside a container that holds
    exactly those devices) and its position in ASCEND_VISIBLE_DEVICES."""
    physical = sorted(e.device_id for e in table.server_ranks(table.servers[entry.node_rank]))
    names = [entry.device_id, physical.index(entry.device_id)]
    visible = _visible_devices(environ)
    if visible and entry.device_id in visible:
        names.append(visible.index(entry.device_id))
    return names


def _logical_device_id(entry: RankEntry, environ: Mapping[str, str]) -> int:
    # ModelArts documents ASCEND_DEVICE_ID as the logical id; DEVICE_ID is what msrun and most
    # scripts export. Without either, map the physical id through the container's visible
    # devices; on bare metal logical == physical.
    for name in ("ASCEND_DEVICE_ID", "DEVICE_ID"):
        value = env_int(environ, name)
        if value is not None:
            return value
    visible = _visible_devices(environ)
    if visible and entry.device_id in visible:
        return visible.index(entry.device_id)
    return entry.device_id


def _server_from_environ(table: RankTable, environ: Mapping[str, str]
                         ) -> Tuple[Optional[Server], str]:
    """The server this process runs on as the platform's variables say, and the variable
    that said it ('' when none did)."""
    if table.format == "v0":
        pod = environ.get("MA_CURRENT_INSTANCE_NAME")
        if not pod:
            return None, ""
        for server in table.servers:
            if server.pod_name == pod:
                return server, f"MA_CURRENT_INSTANCE_NAME={pod}"
        raise UserError(f"MA_CURRENT_INSTANCE_NAME={pod} but rank table {table.path} lists pods "
                        f"{', '.join(s.pod_name or '' for s in table.servers)}")
    for name in ("MA_CURRENT_IP", "MA_CURRENT_HOST_IP"):
        ip = environ.get(name)
        if ip:
            for server in table.servers:
                if ip in (server.server_id, server.host_ip):
                    return server, f"{name}={ip}"
    # A container's IP need not be the host IP a v1 table lists: no match is not an error.
    return None, ""


def _server_name(server: Server) -> str:
    if server.pod_name:
        return f"pod {server.pod_name} (server {server.server_id})"
    return f"server {server.server_id}"


def locate(table: RankTable, environ: Mapping[str, str]) -> Placement:
    """This process's rank in a completed table, checked against RANK_ID, RANK_SIZE,
    DEVICE_ID and ASCEND_DEVICE_ID where the launcher set them."""
    if not table.completed:
        raise UserError(f"rank table {table.path} has status {table.status!r}; wait for it "
                        f"to be completed")
    server, said_by = _server_from_environ(table, environ)
    rank_id = env_int(environ, "RANK_ID")
    if rank_id is not None:
        if not 0 <= rank_id < table.rank_size:
            raise UserError(f"RANK_ID={rank_id} but rank table {table.path} has "
                            f"{table.rank_size} ranks (0..{table.rank_size - 1})")
        entry = table.ranks[rank_id]
        if server is not None and entry.node_rank != server.node_rank:
            raise UserError(f"RANK_ID={rank_id} but rank table {table.path} puts rank {rank_id} "
                            f"on {_server_name(table.servers[entry.node_rank])}, while "
                            f"{said_by} is {_server_name(server)}")
    else:
        if server is None:
            if len(table.servers) != 1:
                raise UserError(f"rank table {table.path} lists {len(table.servers)} servers and "
                                f"nothing says which one this is: set RANK_ID (or "
                                f"MA_CURRENT_INSTANCE_NAME / MA_CURRENT_IP)")
            server = table.servers[0]
        entry = _entry_by_device(table, server, environ)
    _check_environ(table, entry, environ)
    return Placement(rank=entry, device_id=_logical_device_id(entry, environ),
                     local_world_size=len(table.servers[entry.node_rank].ranks),
                     num_nodes=len(table.servers), rank_size=table.rank_size)


def _entry_by_device(table: RankTable, server: Server, environ: Mapping[str, str]) -> RankEntry:
    entries = table.server_ranks(server)
    if len(entries) == 1:
        return entries[0]
    for name in ("ASCEND_DEVICE_ID", "DEVICE_ID"):
        value = env_int(environ, name)
        if value is None:
            continue
        matches = [e for e in entries if value in _device_names(e, table, environ)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UserError(f"{name}={value} but {_server_name(server)} in rank table "
                            f"{table.path} has devices "
                            f"{', '.join(str(e.device_id) for e in entries)}")
        raise UserError(f"{name}={value} could mean device "
                        f"{' or '.join(str(e.device_id) for e in matches)} of "
                        f"{_server_name(server)} in rank table {table.path}; set RANK_ID")
    raise UserError(f"{_server_name(server)} in rank table {table.path} has {len(entries)} "
                    f"devices and neither RANK_ID nor DEVICE_ID says which one is this "
                    f"process's")


def _check_environ(table: RankTable, entry: RankEntry, environ: Mapping[str, str]) -> None:
    size = env_int(environ, "RANK_SIZE")
    if size is not None and size != table.rank_size:
        raise UserError(f"RANK_SIZE={size} but rank table {table.path} has {table.rank_size} "
                        f"ranks")
    names = _device_names(entry, table, environ)
    for name in ("ASCEND_DEVICE_ID", "DEVICE_ID"):
        value = env_int(environ, name)
        if value is not None and value not in names:
            raise UserError(f"{name}={value} but rank table {table.path} gives rank "
                            f"{entry.rank_id} device {entry.device_id} on "
                            f"{_server_name(table.servers[entry.node_rank])}")


# --------------------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelarts.rank_table",
        description="Print every rank of an HCCL rank table (v1.0 / 1.2, or the ModelArts "
                    "jobstart_hccl.json template) as JSON.")
    parser.add_argument("file", help="the table, or the folder holding it (as RANK_TABLE_FILE)")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds to wait for status 'completed' (default 0: read once)")
    parser.add_argument("--locate", action="store_true",
                        help="also say which rank this process is, from its environment")
    args = parser.parse_args(argv)
    try:
        table = wait_completed(args.file, args.timeout)
        out = table.as_dict()
        if args.locate:
            place = locate(table, os.environ)
            out["this_process"] = {"rank_id": place.rank.rank_id, "device_id": place.device_id,
                                   "local_rank": place.rank.local_rank,
                                   "node_rank": place.rank.node_rank,
                                   "local_world_size": place.local_world_size}
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
