"""``python -m selfattn``: this build's facts; ``python -m selfattn bench ...``: the benchmark."""
import json
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from selfattn._bench import main as bench

        return bench(argv[1:])
    import selfattn

    print(json.dumps(selfattn.config(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
