"""`python -m robustness ...` (and `torchrun -m robustness ...`) is the `robust-bench` command."""
import sys

from .cli import main

sys.exit(main())
