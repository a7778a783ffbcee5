"""``python -m nestrank.train retriever --config FILE``: the ``nestrank train`` commands as a module.

Launchers need a module or script: ``torchrun --nproc-per-node N -m nestrank.train retriever
--config FILE`` and ``accelerate launch -m nestrank.train retriever --config FILE`` start one
trainer per process.
"""

import sys

from nestrank.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "train", *sys.argv[1:]]
    main()
