import sys

from robustlab.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
