"""RunConfig: the frozen description of one run, loaded from a file, flags and overrides."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from distlab.clock import check_system
from distlab.config_sections import (
    CheckpointConfig,
    CompressConfig,
    EdgeConfig,
    FaultConfig,
    Frozen,
    NetworkConfig,
    SystemConfig,
)
from distlab.config_threats import AttackConfig, PrivacyConfig, SecAggConfig
from distlab.data.partition import PARTITION_SCHEMES, IidPartition, PartitionConfig
from distlab.strategies import STRATEGIES, StrategyBase, check_config, params_for

# Longest file name on Linux file systems (ext4, xfs, tmpfs), in bytes.
NAME_MAX = 255

# Bounds no real run reaches: a typo such as `--epochs 1000000000000` would start a run that
# never ends. A strategy's `rounds` and `clients` keys are bounded alike (STRATEGY_LIMITS).
MAX_EPOCHS = 100_000
MAX_ROUNDS = 1_000_000
MAX_CLIENTS = 1_000_000


class OptimizerConfig(Frozen):
    """The optimizer every worker or client uses for its local steps."""

    name: Literal["sgd", "adam"] = "sgd"
    """Optimizer: sgd (with optional momentum and weight decay) or adam."""
    lr: float = Field(0.05, gt=0)
    """Learning rate; must be > 0."""
    momentum: float = Field(0.0, ge=0, lt=1)
    """SGD momentum in [0, 1)."""
    weight_decay: float = Field(0.0, ge=0)
    """L2 weight decay, >= 0."""

    @model_validator(mode="after")
    def _momentum_for_sgd(self) -> OptimizerConfig:
        # Adam has no momentum setting of this name; ignoring it would hide a mistake.
        if self.name != "sgd" and self.momentum:
            raise ValueError(f"optimizer.momentum applies to sgd only (name is {self.name!r})")
        return self


class RunConfig(Frozen):
    """One training job: what to train, on which data, under which paradigm."""

    name: str | None = None
    """Run name; the run directory is OUT_DIR/NAME. Default: STRATEGY-DATASET-MODEL-TIME."""
    dataset: str = "mnist-sample"
    """Dataset name; see `distlab datasets`."""
    data_dir: Path | None = None
    """Directory holding dataset files (mnist, fashion-mnist, cifar10) and the cache."""
    download: bool = False
    """Download missing dataset files (checked by SHA-256) where a network exists."""
    model: str = "lenet"
    """Model name: lenet, cnn-dropout, mlp, logreg or vgg-small."""
    strategy: SerializeAsAny[StrategyBase] = Field(default_factory=lambda: _default_strategy())
    """Training paradigm and its parameters (strategy.name selects it)."""
    workers: int = Field(1, ge=1)
    """Number of data-parallel workers, or client hosts for federated strategies; >= 1."""
    partition: PartitionConfig = Field(default_factory=IidPartition)
    """How the training data is divided among workers or clients."""
    sampler: Literal["split-batch", "random", "balanced"] = "split-batch"
    """How a worker walks its data each epoch: split-batch (each global batch split across
    workers, exact equivalence with centralized), random or balanced (per-worker batches)."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """Optimizer settings."""
    batch_size: int = Field(32, ge=1)
    """Batch size: global under split-batch, per worker or client otherwise; >= 1."""
    epochs: int = Field(3, ge=1, le=MAX_EPOCHS)
    """Passes over the training data (data-parallel strategies); 1 to 100000."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seed for every random choice: model init, shuffling, partitioning, sampling, dropout;
    in [0, 2**32 - 1]."""
    eval_every: int = Field(0, ge=0)
    """Evaluate every this many steps (rounds for federated); 0 = once per epoch, or for
    federated runs every tenth of the rounds (every round up to 19 rounds); the last
    round is always evaluated."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """Device: cpu (gloo), cuda (NCCL) or auto (cuda when present)."""
    threads: int = Field(0, ge=0)
    """Torch threads per process; 0 = max(1, cores // processes)."""
    intra_node: Literal["auto", "gloo"] = "auto"
    """How CPU ranks on one host exchange tensors: auto (through shared memory when every
    rank of the group runs on this host, gloo otherwise) or gloo (always the process group)."""
    timeout: float = Field(120.0, gt=0)
    """Seconds a collective may block before the run fails with the stuck rank named."""
    out_dir: Path = Path("runs")
    """Parent directory of the run directory."""
    fault: FaultConfig | None = None
    """Fault injection for robustness checks, e.g. --set fault.rank=1 --set fault.kind=hang;
    fault.rank must be a rank of the run and fault.step within its steps. It fires once: a
    resumed run leaves out a fault that fired unless --set fault.* gives it again."""
    save_model: bool = True
    """Save the final model's state_dict as model.pt in the run directory."""
    oversubscribe: bool = False
    """Allow more local processes than OVERSUBSCRIBE_FACTOR x the cores (slow, but legal)."""
    checkpoint: CheckpointConfig = CheckpointConfig()
    """Checkpoints, e.g. --set checkpoint.every=100."""
    network: NetworkConfig = Field(NetworkConfig(), description="Runs across hosts: network.*")
    compress: CompressConfig = CompressConfig()
    """Compression of the updates workers and clients send, e.g. --set compress.kind=topk."""
    system: SystemConfig = SystemConfig()
    """Unequal client speeds and links on a simulated clock, e.g. --set system.speed=lognormal."""
    privacy: PrivacyConfig = PrivacyConfig()
    """Differential privacy, e.g. --set privacy.mode=central --set privacy.noise=1.0."""
    secagg: SecAggConfig = SecAggConfig()
    """Secure aggregation of fedavg's updates, e.g. --set secagg.enabled=true."""
    attack: AttackConfig = AttackConfig()
    """Attacking clients or workers, e.g. --set attack.kind=sign-flip --set attack.fraction=0.2."""
    edge: EdgeConfig = EdgeConfig()
    """Edge boards for the serial executor of the federated family."""
    tensorboard: bool = False
    """Write TensorBoard scalars (loss, accuracy, bytes per step or round, the summary) to
    RUN_DIR/tensorboard; view with `tensorboard --logdir OUT_DIR`. Needs the tensorboard
    package: pip install 'distlab[tensorboard]'."""

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_params(cls, value: Any) -> Any:
        # Each strategy's Params is looked up by name when a config names it, so importing
        # this module loads no strategy (and no torch).
        return strategy_params(value)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from distlab.data.datasets import DATASETS

        return _check_choice("dataset", value, DATASETS)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from distlab.models import MODELS

        return _check_choice("model", value, MODELS)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        # The name is joined to out_dir, and --overwrite deletes what it points at: '.',
        # '..' or a path would put a run (or a deletion) outside its own directory.
        if value == "":
            raise ValueError(
                "name must not be empty (leave out --name for the automatic "
                "STRATEGY-DATASET-MODEL-TIME name)"
            )
        if value is not None and (value in (".", "..") or "/" in value or "\\" in value):
            raise ValueError(f"name must be a plain directory name, without '/' (got {value!r})")
        if value is not None and len(value.encode()) > NAME_MAX:
            raise ValueError(
                f"name must be at most {NAME_MAX} bytes, the file system's limit "
                f"(got {len(value.encode())})"
            )
        return value

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _default_strategy() -> StrategyBase:
    return params_for("centralized")()


def strategy_params(value: Any) -> Any:
    """A strategy given as a name or a mapping -> that strategy's Params; ValueError names
    the bad key or value."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        return value  # a Params instance, or a type error reported by pydantic
    name = value.get("name", "centralized")
    if name not in STRATEGIES:
        allowed = ", ".join(STRATEGIES)
        raise ValueError(f"unknown strategy.name {name!r} (allowed: {allowed})")
    try:
        return params_for(name).model_validate(value)
    except ValidationError as exc:
        raise ValueError(describe_error(exc, ("strategy", name))) from None


def _check_choice(field: str, value: str, allowed: dict) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r} (allowed: {', '.join(sorted(allowed))})")
    return value


# Loading. How a config file is read, by its suffix; any other is YAML.
PARSERS = {".toml": tomllib.loads, ".json": json.loads}


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON config file into a plain dict; ValueError when it can't."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text") from None
    try:
        data = PARSERS.get(path.suffix.lower(), yaml.safe_load)(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"malformed config file {str(path)!r}: {first}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def read_run_file(path: Path) -> dict[str, Any]:
    """A run's --config file; one that sets no key is refused, since running every default
    is rarely what a file was meant to say."""
    data = read_config_file(path)
    if not data:
        raise ValueError(
            f"config file {str(path)!r} is empty: it sets no key (leave out --config to run "
            "the defaults)"
        )
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split one `key=value` override; the value is parsed as YAML (so 10 is an int)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"bad --set {text!r}: expected key=value, e.g. strategy.mode=async")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set data[a][b][c] = value for key 'a.b.c', creating mappings on the way."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = _mapping_at(node, part, key)
    node[leaf] = value


SHORT_FORMS = {"strategy": "name", "partition": "scheme"}


def _mapping_at(node: dict[str, Any], part: str, key: str) -> dict[str, Any]:
    """node[part] as a mapping: a short form expands, a missing one starts empty."""
    child = node.get(part)
    if isinstance(child, str) and part in SHORT_FORMS:
        child = {SHORT_FORMS[part]: child}
    elif child is None:
        child = {}
    elif not isinstance(child, dict):
        # Replacing it would silently drop a value the user gave (e.g. `optimizer: adam`).
        raise ValueError(f"cannot set {key!r}: {part} is {child!r}, not a mapping")
    node[part] = child
    return child


def build_config(
    file: Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """File, then flags (dotted keys, None = not given), then --set overrides; validated."""
    return validate_config(build_data(file, flags, overrides))


def build_data(
    file: Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    start: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config mapping before validation: `start` (a sweep file's base), then the file,
    then flags (dotted keys, None = not given), then --set overrides."""
    data = merge(_normalize_shorthands(start or {}), read_run_file(file) if file else {})
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    for text in overrides or []:
        set_dotted(data, *parse_override(text))
    return data


def merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """`high` over `low`, mapping by mapping (short forms such as `strategy: fedavg` first
    expanded), so a file's `optimizer.lr` keeps the base's `optimizer.momentum`."""
    out = dict(_normalize_shorthands(low))
    for key, value in _normalize_shorthands(high).items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = merge(out[key], value) if both else value
    return out


def _normalize_shorthands(data: dict[str, Any]) -> dict[str, Any]:
    """Accept `strategy: fedavg` and `partition: iid` as short forms of the mappings."""
    data = dict(data)
    for key, inner in SHORT_FORMS.items():
        if isinstance(data.get(key), str):
            data[key] = {inner: data[key]}
    return data


def validate_config(data: dict[str, Any]) -> RunConfig:
    """Validate a plain dict into a RunConfig; any problem becomes a one-line ValueError."""
    data = _normalize_shorthands(data)
    if isinstance(data.get("partition"), dict):
        data["partition"] = {"scheme": "iid", **data["partition"]}
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(describe_error(exc)) from None
    return check_run(config)


def check_run(cfg: RunConfig) -> RunConfig:
    """The checks across fields, which pydantic's own do not make (a RunConfig built
    directly has had pydantic's alone): bounds, then the strategy's checks and the fault's
    rank. Returns `cfg`; ValueError in one line."""
    check_limits(cfg)
    check_config(cfg)
    check_system(cfg)
    return cfg


# Strategy keys bounded whatever the strategy that has them (--rounds and --clients).
STRATEGY_LIMITS = {"rounds": MAX_ROUNDS, "clients": MAX_CLIENTS}


def check_limits(cfg: RunConfig) -> None:
    """Refuse a strategy's rounds or clients beyond the bounds no real run reaches."""
    for key, limit in STRATEGY_LIMITS.items():
        value = getattr(cfg.strategy, key, None)
        if isinstance(value, int) and value > limit:
            raise ValueError(f"strategy.{key} must be <= {limit} (got {value})")


def config_data(config: Any) -> dict[str, Any]:
    """A config given to the API (a RunConfig or a mapping) as a plain dict; anything else
    is refused in one line, not left to fail deep inside dict()."""
    if isinstance(config, RunConfig):
        return config.model_dump()
    if isinstance(config, Mapping):
        return dict(config)
    shown = repr(config)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ValueError(
        f"the config must be a mapping of keys to values or a RunConfig "
        f"(got {type(config).__name__} {shown})"
    )


def describe_error(exc: ValidationError, prefix: tuple = ()) -> str:
    """One line naming the bad key, the bad value and what is allowed; `prefix` is where
    the validated model sits in the RunConfig (("strategy", name) for a strategy's Params)."""
    err = exc.errors()[0]
    where = (*prefix, *err["loc"])
    loc = ".".join(str(p) for p in where if not _is_union_tag(p))
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        return f"unknown config key {loc!r}{_allowed_keys(where)}"
    if kind == "union_tag_invalid":
        tags, key = err["ctx"]["expected_tags"].replace("'", ""), err["ctx"]["discriminator"]
        return f"unknown {loc}.{key.strip(chr(39))} {err['ctx']['tag']!r} (allowed: {tags})"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind == "finite_number":
        return f"{loc} must be a finite number (got {value!r})"
    bounds = dict(greater_than_equal=">=", greater_than=">", less_than="<", less_than_equal="<=")
    if kind in bounds:
        limit = next(iter(err["ctx"].values()))
        return f"{loc} must be {bounds[kind]} {limit} (got {value!r})"
    if kind == "literal_error":
        return f"{loc} must be one of {err['ctx']['expected'].replace(chr(39), '')} (got {value!r})"
    return f"{loc} {err['msg'].lower()} (got {value!r})"


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in STRATEGIES or part in PARTITION_SCHEMES)


def _allowed_keys(loc: tuple) -> str:
    section, choice = loc[0], loc[1] if len(loc) >= 2 else None
    if section == "partition" and choice:
        fields = PARTITION_SCHEMES[choice].model_fields
        return f" for scheme {choice!r} (allowed: {', '.join(fields)})"
    if section == "strategy" and choice:
        fields = params_for(choice).model_fields
        return f" for strategy {choice!r} (allowed: {', '.join(fields)})"
    model = NESTED.get(section, RunConfig) if choice else RunConfig
    return f" (allowed: {', '.join(model.model_fields)})"


NESTED: dict[str, type[BaseModel]] = {
    "optimizer": OptimizerConfig,
    "fault": FaultConfig,
    "checkpoint": CheckpointConfig,
    "network": NetworkConfig,
    "compress": CompressConfig,
    "system": SystemConfig,
    "privacy": PrivacyConfig,
    "secagg": SecAggConfig,
    "attack": AttackConfig,
    "edge": EdgeConfig,
}


# The run command's flags -> the dotted config keys they set; `--grid` takes either form. A
# flag named as its key sets that key.
SAME_NAME_FLAGS = ("dataset", "model", "workers", "epochs", "batch_size", "seed", "device")
SAME_NAME_FLAGS += ("data_dir", "out_dir", "name", "sampler", "download", "tensorboard")
FLAG_KEYS = {
    **{flag: flag for flag in SAME_NAME_FLAGS},
    "strategy": "strategy.name",
    "lr": "optimizer.lr",
    "optimizer": "optimizer.name",
    "partition": "partition.scheme",
    "alpha": "partition.alpha",
    "min_size": "partition.min_size",
    "shards_per_client": "partition.shards_per_client",
    "classes_per_client": "partition.classes_per_client",
    "clients": "strategy.clients",
    "rounds": "strategy.rounds",
}


def config_field(path: str):
    """The pydantic field behind a dotted config key (strategy keys: the first strategy
    that has it), or None."""
    section, *rest = path.split(".")
    if not rest:
        return RunConfig.model_fields.get(section)
    if section in NESTED:
        return NESTED[section].model_fields.get(rest[0])
    if section == "partition":
        models = list(PARTITION_SCHEMES.values())
    elif section == "strategy":
        # in registry order, importing strategies only until one has the key
        models = (params_for(name) for name in STRATEGIES)
    else:
        return None
    return next((m.model_fields[rest[0]] for m in models if rest[0] in m.model_fields), None)
