"""`ray job submit` entry point of a distributed RL run: ``rl-statetune rl --ray`` inside the job.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env launch/runtime_env.yaml \
        -- python -m launch.submit_entry --config configs/rl_1p5b_70b_8gpu.yaml [--set train.steps=100]

Inside a job, RAY_ADDRESS points at the cluster, so the run joins it (distributed.num_cpus is ignored). A run
that cannot be placed fails in the pre-flight check, naming what is missing, instead of waiting for resources
that never come. From a shell, ``python -m launch.submit_entry ARGS`` is ``rl-statetune rl --ray ARGS``.
"""

from __future__ import annotations

import sys

from rl_statetune.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["rl", "--ray", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
