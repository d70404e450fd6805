"""`python -m resnet_jax.tools.compare`: the same command as `resnet-jax compare`."""

import sys

from resnet_jax.tools.compare import main

sys.exit(main())
