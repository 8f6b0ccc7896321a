"""The config sections of privacy and robustness: differential privacy (`privacy.*`), secure
aggregation (`secagg.*`) and attacks (`attack.*`).

Imports pydantic only, like config.py: the CLI reads these without loading torch. The rules
that span sections or need the strategy (a target epsilon no noise reaches, an attacker
fraction that leaves Krum undefined) are checked where the feature is wired in, before any
process starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distlab.config_sections import Frozen

# The attacks of transforms/attacks.py, by name (listed here so that a config is checked
# without loading torch). Model poisoning changes what an attacker sends; data poisoning
# (label-flip, backdoor) changes what it trains on.
ATTACKS = ("none", "sign-flip", "gaussian", "scaling", "label-flip", "alie", "ipm", "backdoor")
DATA_ATTACKS = ("label-flip", "backdoor")


class PrivacyConfig(Frozen):
    """Differential privacy, e.g. --set privacy.mode=central --set privacy.noise=1.0.

    central: DP-FedAvg (McMahan et al. 2018): each client's model delta clipped to norm
    `clip`, Gaussian noise of standard deviation noise * clip added to the sum at the
    server, clients sampled by Poisson sampling at rate clients_per_round / clients.
    dpsgd: DP-SGD (Abadi et al. 2016): per-sample gradients clipped to `clip` and noised
    (Opacus for centralized and allreduce; inside each client's local training for fedavg).
    Epsilon at `delta` comes from Opacus's accountant and is recorded in every round or
    step event and in the summary."""

    mode: Literal["none", "central", "dpsgd"] = "none"
    """none, central (client-level DP-FedAvg) or dpsgd (sample-level DP-SGD)."""
    noise: float = Field(1.0, ge=0)
    """Noise multiplier z: the Gaussian's standard deviation over the clipping norm."""
    clip: float | None = Field(1.0, gt=0)
    """Clipping norm C of a client's delta (central) or a sample's gradient (dpsgd); None =
    no clipping (only with noise 0: without a bound no noise gives privacy)."""
    adaptive: bool = False
    """central: adapt the clipping norm to a quantile of the update norms (Andrew et al.
    2021, "Differentially Private Learning with Adaptive Clipping"); clip is the start."""
    quantile: float = Field(0.5, gt=0, lt=1)
    """adaptive: the target fraction of updates left unclipped, gamma."""
    clip_step: float = Field(0.2, gt=0)
    """adaptive: the geometric step of the clipping norm, eta_C."""
    count_noise: float | None = Field(None, ge=0)
    """adaptive: standard deviation of the noise on the count of unclipped updates, sigma_b;
    None = expected clients per round / 20 (the paper's choice)."""
    delta: float = Field(1e-5, gt=0, lt=1)
    """delta of (epsilon, delta)-DP, in (0, 1)."""
    target_epsilon: float | None = Field(None, gt=0)
    """Pick the smallest noise multiplier that keeps epsilon at delta within this over the
    whole run (replaces `noise`); refused when no noise reaches it."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Opacus's accountant: rdp (Renyi DP, Mironov 2017) or prv (privacy random variables,
    Gopi et al. 2021)."""

    @model_validator(mode="after")
    def _bounded(self) -> PrivacyConfig:
        if self.mode != "none" and self.clip is None and (self.noise or self.target_epsilon):
            raise ValueError(
                "privacy.clip=None leaves the sensitivity unbounded: set privacy.clip > 0, "
                "or privacy.noise=0 with no target_epsilon"
            )
        return self

    @property
    def on(self) -> bool:
        return self.mode != "none"


class SecAggConfig(Frozen):
    """Secure aggregation of fedavg's updates: SecAgg+ (Bell et al. 2020) in simulation with
    real cryptography, or Flower's SecAggPlusWorkflow on a deployed run."""

    enabled: bool = False
    """Mask every client's quantized update; the server sees only masked updates and
    their sum."""
    threshold: int | None = Field(None, ge=2)
    """Shamir threshold t: shares needed to unmask a dropped client; None = more than half
    of a client's neighbours. At most the clients of a round."""
    neighbours: int | None = Field(None, ge=2)
    """SecAgg+: each client masks with this many others (a random graph); None = every
    other client of the round (the original SecAgg, Bonawitz et al. 2017)."""
    clip: float = Field(8.0, gt=0)
    """Each delta value is clipped to [-clip, clip] before quantization."""
    bits: int = Field(22, ge=2, le=30)
    """Quantization levels 2**bits over [-clip, clip]; masks work modulo 2**32."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Probability (seeded) that a client drops after sharing its keys and before sending
    its masked update: the server unmasks the others with the Shamir shares."""


class AttackConfig(Frozen):
    """Clients or workers that attack the run, e.g. --set attack.kind=sign-flip
    --set attack.fraction=0.2. Which ones attack is drawn once (seeded) and recorded."""

    kind: str = "none"
    """none, sign-flip, gaussian, scaling (model replacement, Bagdasaryan et al. 2020),
    label-flip, alie ("A Little Is Enough", Baruch et al. 2019), ipm (inner-product
    manipulation, Xie et al. 2019) or backdoor (a pixel pattern relabelled as `target`)."""
    fraction: float = Field(0.2, ge=0, lt=1)
    """Fraction of clients (fedavg) or worker ranks (param-server, allreduce) that attack,
    in [0, 1)."""
    start: int = Field(1, ge=1)
    """First round (fedavg) or step the attack acts in."""
    seed: int | None = Field(None, ge=0)
    """Seed of the draw of attackers; None = the run's seed."""
    scale: float | None = Field(None, gt=0)
    """sign-flip: the factor of the reversed update (1); scaling: the boost (None = clients
    per round, the model replacement of Bagdasaryan et al.)."""
    sigma: float = Field(1.0, gt=0)
    """gaussian: standard deviation of the noise sent in place of an update."""
    z: float | None = Field(None, gt=0)
    """alie: how many standard deviations from the mean (None = the paper's z_max for the
    round's clients and attackers)."""
    epsilon: float = Field(0.1, gt=0)
    """ipm: the update sent is -epsilon times the mean of the honest ones."""
    target: int = Field(0, ge=0)
    """backdoor: the label the pattern is relabelled to."""
    poison: float = Field(0.5, gt=0, le=1)
    """backdoor: the fraction of an attacker's samples that carry the pattern."""

    @model_validator(mode="after")
    def _known(self) -> AttackConfig:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r} (allowed: {', '.join(ATTACKS)})")
        return self

    @property
    def on(self) -> bool:
        return self.kind != "none" and self.fraction > 0

    @property
    def poisons_data(self) -> bool:
        return self.kind in DATA_ATTACKS
