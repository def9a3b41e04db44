"""`llm4gen` under accelerate's FSDP mode on CPU processes (gloo), for the tests.

accelerate enables FSDP for GPU processes only; this launcher marks the (already set up) CPU processes as GPU-style
distributed ones before llm4gen creates its Accelerator, so `accelerate launch --config_file
configs/accelerate/fsdp.yaml` shards the CAM and UNet with FSDP version 2 across CPU processes, on the same code path
as on GPUs. It prints the type and local shape of the first trained parameter, so the test can see the sharding.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 tests/fsdp_on_cpu.py train CFG
"""

import sys

from accelerate.state import PartialState
from accelerate.utils import DistributedType

PartialState(cpu=True)
PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU

import llm4gen.training.trainer as trainer  # noqa: E402
from llm4gen.cli import main  # noqa: E402

_ema_init = trainer.EMA.__init__


def _report(self, params, decay):
    first = next(iter(params.values()))
    local = first.to_local() if hasattr(first, "to_local") else first
    print(f"rank {PartialState().process_index}: first trained parameter {type(first).__name__} "
          f"{tuple(first.shape)} local {tuple(local.shape)}", flush=True)
    _ema_init(self, params, decay)


trainer.EMA.__init__ = _report
sys.argv = ["llm4gen", *sys.argv[1:]]
main()
