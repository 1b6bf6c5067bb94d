"""`python -m runner.report <sweep dir>`: rewrite a sweep's comparison report (runner.sweep.report)."""

import sys

from runner.sweep.report import main

if __name__ == "__main__":
    main(sys.argv[1:])
