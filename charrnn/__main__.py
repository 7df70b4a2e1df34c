"""`python -m charrnn` runs the CLI (and is what `torchrun -m charrnn` launches)."""

from charrnn.cli import main

main()
