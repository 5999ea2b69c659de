"""``steerlab cache``: list what the user cache holds, and remove entries (:mod:`steerlab.cache`)."""

from __future__ import annotations

from ..cache import age, entries, human_size, remove
from ..errors import InputError
from ..sources import cache_dir


def cmd_cache(args) -> int:
    if args.action == "list":
        if args.entries:
            raise InputError("`steerlab cache list` takes no names; to remove entries: steerlab cache remove KIND/NAME")
        found = [e for e in entries() if e.stale or not args.stale]
        what = ("stale " if args.stale else "") + ("entry" if len(found) == 1 else "entries")
        print(f"{cache_dir()}: {len(found)} {what}, {human_size(sum(e.size for e in found))}")
        for e in found:
            flag = "  [stale]" if e.stale else ""
            print(f"  {e.key:60s} {human_size(e.size):>9s}  {age(e.modified):>8s}  {e.note}{flag}")
        if any(e.stale for e in found):
            print("Stale entries will not be read again: `steerlab cache remove --stale` removes them.")
        return 0
    if not args.entries and not args.stale:
        raise InputError("Name the entries to remove (kind/name, as `steerlab cache` lists them) or pass --stale.")
    gone = remove(args.entries, stale=args.stale)
    for e in gone:
        print(f"removed {e.key} ({human_size(e.size)})")
    print(f"freed {human_size(sum(e.size for e in gone))}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("cache", help="list the user cache (converted models, stimuli, labels) or remove entries")
    p.add_argument("action", nargs="?", choices=["list", "remove"], default="list")
    p.add_argument("entries", nargs="*", help="remove: entries as kind/name (as listed)")
    p.add_argument("--stale", action="store_true",
                   help="list: only the stale entries; remove: also every stale entry (e.g. a model converted for "
                        "another transformers version)")
    p.set_defaults(func=cmd_cache)
