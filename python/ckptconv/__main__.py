"""``python3 -m ckptconv ARGS`` runs the ``ckptconv`` command with ARGS (same output, same exit
status): the binary this package was built with (or installed next to), else the one on PATH."""

import os
import shutil
import sys


def _binary():
    candidates = []
    try:
        from . import _build_info

        candidates.append(_build_info.CKPTCONV_BINARY)
    except ImportError:
        pass
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    found = shutil.which("ckptconv")
    if found:
        return found
    where = f" ({', '.join(candidates)})" if candidates else ""
    sys.stderr.write(
        f"ckptconv: the ckptconv command was not found: not where this package was built{where} "
        "and not on PATH\n"
    )
    sys.exit(1)


def main():
    binary = _binary()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, ["ckptconv"] + sys.argv[1:])


if __name__ == "__main__":
    main()
