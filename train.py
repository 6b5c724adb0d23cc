"""Fine-tune a causal LM on a task, then test its best checkpoint on the held-out split.

    python train.py                                        # SmolLM2-135M on SST-2 (offline split of the dev file)
    python train.py experiment=finetune_sst2               # the minutes-on-a-CPU recipe
    python train.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt   # resume a killed run
    python train.py trainer=ddp_cpu                         # 2 CPU processes (gloo)

An alias of ``fnet train`` (``fnet-train``), :mod:`fnet.cli.train`; everything happens in
:func:`fnet.pipelines.train.run_training`; see conf/train.yaml.
"""

from fnet.cli.train import main

if __name__ == "__main__":
    main()
