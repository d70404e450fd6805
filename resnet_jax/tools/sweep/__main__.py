"""`python -m resnet_jax.tools.sweep`: the same command as `resnet-jax sweep`."""

import sys

from resnet_jax import interrupts
from resnet_jax.tools.sweep import main

sys.exit(interrupts.run(main, interrupts.RESUMES))
