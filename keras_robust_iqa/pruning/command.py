"""`robust-iqa prune`: channel pruning of a run's model (mean weight or activation energy), then fine-tuning."""

# criterion.CRITERIA (a test checks they agree), spelt out: importing criterion imports Keras,
# which `--help` need not wait for.
CRITERIA = ("mean_weight", "activation")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "prune",
        help="remove the lowest-scoring channels (mean weight or activation energy) from a run's model, "
        "then fine-tune it",
        description="Prune the output channels that score lowest (mean |w|, or mean squared activation on "
        "training patches; below tau, or a fraction of them), rebuild the model with fewer channels, "
        "and fine-tune it with model.fit on the run's dataset. Writes a run folder (model.keras, "
        "config.json, metrics.json, history.csv, pruned/model.keras) and pruning_report.json / .md "
        "with parameters, FLOPs, latency, SROCC/PLCC and the Lipschitz bound before pruning, after pruning and after "
        "fine-tuning.",
    )
    p.add_argument("--run", required=True, help="run folder to prune (written by `robust-iqa train`)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--fraction", type=float,
                        help="fraction of the prunable channels to remove, in [0, 1), smallest score "
                        "first (taken of each set of layers whose channels are tied)")
    target.add_argument("--tau", type=float,
                        help="remove every channel whose score is below this threshold (the "
                        "report lists each layer's scores)")
    p.add_argument("--criterion", choices=CRITERIA, default="activation",
                   help="how channels are scored: activation, a channel's mean squared output on 4 batches "
                   "of training patches, measured again at each pruning step; mean_weight, the mean |w| of "
                   "the weights that produce it (the paper's) (default: activation)")
    p.add_argument("--prune-epochs", type=int, default=1,
                   help="epochs of training with channel masks while the fraction (or tau) ramps up "
                   "(tfmot PolynomialDecay); 0 prunes at once (default: 1)")
    p.add_argument("--finetune-epochs", type=int, default=15,
                   help="most epochs of fine-tuning after the channels are removed (early stopping with "
                   "the run's patience); the best epoch by validation SROCC is kept (default: 15, the paper's)")
    p.add_argument("--learning-rate", type=float,
                   help="Adam learning rate for the masked epochs and fine-tuning (default: the run's)")
    p.add_argument("--distill-weight", type=float, default=0.0, metavar="W",
                   help="fine-tune towards the unpruned model: each training patch's target is (1 - W) * MOS "
                   "+ W * the --run model's score; 1 teaches the pruned model the function it was cut from, "
                   "0 fine-tunes on the MOS alone, as the paper does (default: 0)")
    p.add_argument("--out", required=True, help="run folder to write, e.g. runs/NAME-pruned")
    p.set_defaults(func=run)


def run(args):
    from keras_robust_iqa.pruning.pipeline import STAGES, prune_run

    report = prune_run(
        args.run, args.out, fraction=args.fraction, tau=args.tau, prune_epochs=args.prune_epochs,
        finetune_epochs=args.finetune_epochs, learning_rate=args.learning_rate, criterion=args.criterion,
        distill_weight=args.distill_weight,
    )
    for stage in STAGES:
        s = report["stages"][stage]
        print(f"{stage:>15}: params {s['params']:,}  FLOPs {s['flops']:,}  test SROCC "
              f"{s['test']['srocc']:.4f}  PLCC {s['test']['plcc']:.4f}  Lipschitz {s['lipschitz_bound']}")
    print(f"pruned {report['pruned_channels']} of {report['prunable_channels']} channels; "
          f"report: {args.out}/pruning_report.md")
    return 0
