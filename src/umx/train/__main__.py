"""`python -m umx.train` (also under `torchrun -m umx.train`): the same as `umx train`."""

import sys

from umx.train.options import main

if __name__ == "__main__":
    sys.exit(main())
