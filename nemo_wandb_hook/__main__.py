import sys

from nemo_wandb_hook.cli import main

sys.exit(main())
