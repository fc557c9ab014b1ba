"""``lzo-bench train``: options to a :class:`~lzo_bench.training.config.TrainConfig` (from a profile, or a run
to resume), then :func:`lzo_bench.training.train.train`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from lzo_bench.cli.common import ArchName, DatasetName, DistName, app, fail, interruptible, parse_hidden, typed
from lzo_bench.core.gates import Method
from lzo_bench.ops.backends import BackendName


@app.command()
@interruptible("nothing was written (the run folder is made only once the run starts)")  # start-up: issue 34, 15
def train(
    ctx: typer.Context,
    profile: Annotated[Optional[str], typer.Option("--profile", help="A profile TOML (profiles/): its dataset, distribution, δ, m, epochs, network; options given here override it.")] = None,
    method: Annotated[Method, typer.Option(help="Backward rule.")] = Method.LOCALZO,
    dist: Annotated[DistName, typer.Option(help="Distribution of z; the surrogate of `surrogate`/`sparsegrad` is its expected LocalZO surrogate.")] = "normal",  # type: ignore[assignment]
    k: Annotated[Optional[float], typer.Option(help="Temperature of sigmoid (default a/δ, so c = 1) or fast-sigmoid (default 100).")] = None,
    delta: Annotated[float, typer.Option(help="LocalZO δ (> 0).")] = 0.05,
    samples: Annotated[int, typer.Option("--samples", "-m", help="LocalZO samples m per neuron (≥ 1).")] = 1,
    bth: Annotated[Optional[float], typer.Option(help="SparseGrad band B_th (> 0); default δ·E[max_k|z_k|].")] = None,
    dataset: Annotated[DatasetName, typer.Option(help="Dataset: digits is embedded; nmnist, shd, fmnist are read from --data-dir.")] = "digits",  # type: ignore[assignment]
    data_dir: Annotated[Optional[str], typer.Option(help="Folder holding NMNIST/, SHD/, FashionMNIST/ (default $LZO_DATA_DIR or ./data).")] = None,
    download: Annotated[bool, typer.Option("--download", help="Download N-MNIST / SHD through tonic if missing.")] = False,
    epochs: Annotated[int, typer.Option(help="Epochs (≥ 1).")] = 20,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size; default: the dataset's.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate; default: the dataset's.")] = None,
    arch: Annotated[ArchName, typer.Option(help="fc: fully connected --hidden layers; conv: the dataset's conv layers (digits 1×8×8, fmnist 1×28×28, nmnist 2×34×34 with the polarities as channels), then the --hidden layers.")] = "fc",  # type: ignore[assignment]
    hidden: Annotated[str, typer.Option(help="Hidden layer sizes, comma-separated (after the conv layers with --arch conv).")] = "200,200",
    steps: Annotated[Optional[int], typer.Option(help="Time steps T; default: the dataset's.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for init, shuffling and LocalZO draws.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[BackendName, typer.Option(help="LIF layer implementation.")] = BackendName.AUTO,
    regularize: Annotated[bool, typer.Option(help="SparseGrad spike-count regularisers.")] = True,
    energy: Annotated[bool, typer.Option("--energy", help="Record GPU energy per epoch and per update (NVML) in metrics.json.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's, every core). On a shared machine give the cores that are free: two runs that each take all cores slow each other 10-40x.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder; default runs/<dataset>-<method>-<dist>-seed<seed>-<time>.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Reuse an --out folder that already holds a run.")] = False,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue the run in this folder from its last finished epoch, with its own configuration (only --epochs and --energy may be given).")] = None,
) -> None:
    """Train a feed-forward LIF network and write config.json, metrics.json and checkpoint.pt."""
    from lzo_bench.runtime.signals import pause_point

    pause_point("train-start")
    from lzo_bench.cli.report import RichReporter, console, summary_table
    from lzo_bench.training.config import ConfigError, TrainConfig
    from lzo_bench.training.run_folder import RESUME_MAY_CHANGE, resume_config
    from lzo_bench.training.train import TrainingDiverged, TrainingFailed, TrainingInterrupted
    from lzo_bench.training.train import train as run_training

    cfg_kwargs = dict(
        dataset=dataset.value, arch=arch.value, data_dir=data_dir, download=download, method=method.value, dist=dist.value, k=k, delta=delta, samples=samples,
        bth=bth, epochs=epochs, batch_size=batch_size, lr=lr, hidden=parse_hidden(hidden),
        steps=steps, seed=seed, device=device, backend=backend.value, regularize=regularize, energy=energy,
        threads=threads, out=out, overwrite=overwrite,
    )
    if resume is not None:
        others = [name for name in [*cfg_kwargs, "profile"] if typed(ctx, name) and name not in RESUME_MAY_CHANGE]
        if others:
            raise fail(f"--resume continues {resume} with its own configuration; only --epochs and --energy may be "
                       f"given with it (got --{others[0].replace('_', '-')})")
        try:
            cfg = resume_config(resume, epochs if typed(ctx, "epochs") else None, energy if typed(ctx, "energy") else None)
        except ConfigError as e:
            raise fail(str(e)) from None
    elif profile:
        from lzo_bench.experiments.recipe import RecipeError, load_recipe

        try:
            prof = load_recipe(profile)
        except RecipeError as e:
            raise fail(f"--profile: {e}") from None
        explicit = {name for name in cfg_kwargs if typed(ctx, name)}
        if not typed(ctx, "method"):
            cfg_kwargs["method"] = prof.methods[-1]
        cfg_kwargs.update({k: v for k, v in prof.train_kwargs(cfg_kwargs["method"]).items() if k not in explicit})
    if resume is None:
        cfg = TrainConfig(**cfg_kwargs)
    try:
        result = run_training(cfg, RichReporter(console), resume=resume is not None)
    except ConfigError as e:
        raise fail(str(e)) from None
    except (TrainingDiverged, TrainingFailed) as e:
        raise fail(str(e), 1) from None
    except OSError as e:  # the run folder's first files could not be written (a full disk, say): lock released
        raise fail(f"cannot write the run folder: {e.filename or ''} ({e.strerror or e}); free space or choose "
                   "another --out", 1) from None
    except TrainingInterrupted as e:
        raise fail(str(e), 128 + e.signum) from None  # 130 for Ctrl-C, 143 for SIGTERM
    try:
        console.print(summary_table(result))
        typer.echo(f"run folder: {result.out}")  # whole, on its own line, to copy (the table may cut it at 80 columns)
    except KeyboardInterrupt as e:
        import signal

        from lzo_bench.runtime.signals import signum_of

        n = signum_of(e)
        raise fail(f"interrupted ({signal.Signals(n).name}) while printing the summary; the run finished and is "
                   f"kept in {result.out}", 128 + n) from None
