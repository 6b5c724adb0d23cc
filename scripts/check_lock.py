"""Compare the installed distributions with a lock file; print what differs. Exit 1 when anything does.

python scripts/check_lock.py requirements.lock
"""

import re
import sys
from importlib import metadata

from packaging.utils import canonicalize_name
from packaging.version import Version


def main(lock_path: str) -> int:
    locked = {}
    for line in open(lock_path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            locked[canonicalize_name(match[1])] = match[2]
    differ = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name in ("fnet", "pip", "setuptools", "wheel") or name not in locked:
            continue
        installed, want = Version(dist.version), Version(locked[name])
        if installed.public != want.public:  # torch's +cpu local label is not a different release
            differ.append(f"{name}: installed {dist.version}, lock {locked[name]}")
    for line in differ:
        print(f"check_lock: {line}", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock"))
