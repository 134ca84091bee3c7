"""`python -m mltrain.launch.torchrun ARGS` is `torchrun ARGS`: torch.distributed.run's own main, unchanged,
in a process started as mltrain/startup.py starts one (the GC off while torch imports, no full scan at exit):
~1 s less CPU per local launch. The Slurm script runs the cluster's `torchrun` itself."""

from mltrain import startup

startup.begin()

from torch.distributed.run import main  # noqa: E402

startup.settle()

if __name__ == "__main__":
    main()
