"""python -m ownsocket explain|trail ...: the subcommands that are not the
server (the server itself runs under twistd: twistd -n ownsocket)."""

import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m ownsocket explain [options]\n"
              "       python -m ownsocket trail [--admin URL | --config FILE] MAC\n"
              "(the server: twistd -n ownsocket --config FILE)")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "explain":
        from ownsocket.explain import main as explain_main
        return explain_main(rest)
    if command == "trail":
        from ownsocket.admin.cli import main as trail_main
        return trail_main(rest)
    print(f"ownsocket: unknown command {command!r} (known: explain, trail)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
