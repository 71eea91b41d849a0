"""The science of the model, one named part per module; each part is a config key and a sweep axis.

    network.py     the UNet over spectrograms, with the class embedding (`build_unet`)
    objectives.py  what the network predicts: epsilon, v_prediction, sample (x0)   train.prediction
    losses.py      the loss norm and its per-timestep weighting (min-SNR)         train.loss, train.loss_weighting
    schedules.py   the noise schedule: beta schedule, zero terminal SNR          train.beta_schedule, ...
    samplers.py    DDPM, DDIM, DPM-Solver++(2M), UniPC, Euler and the sampling loop  sample.scheduler
    guidance.py    the null class and classifier-free guidance                   model.class_dropout
    model.py       the trained model as one folder that records its whole recipe (`DiffusionModel`)

Adding a part is one small function or class and one registry line: `core.config.validate`, the
command lines' `--help` and the sweep read the registries (`OBJECTIVES`, `LOSS_WEIGHTINGS`, `SAMPLERS`...).
"""
