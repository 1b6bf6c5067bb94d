import sys

from runner import cli


def run() -> None:
    try:
        cli.main()
    except SystemExit as leaving:
        if leaving.code == 1 and not cli.ours:
            sys.exit(2)  # Hydra rejected an override before any work: a config error
        raise


if __name__ == "__main__":
    run()
