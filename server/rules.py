"""The server's aggregation rule for a run: each part's typed config, built from the settings.

``strategies/`` never reads the run settings: this module turns them into what each part
takes (the rule's own options, ``UpdatePolicy``, ``SecAggConfig``, ``ClientDPConfig``),
builds the rule and wraps it in secure aggregation or client-level DP when they are on.
Every error names the run-config key at fault.
"""

from __future__ import annotations

from typing import Any

from federation import wire
from federation.fields import SOURCE, setting_fields
from federation.settings import RunSettings, Weighting
from strategies import (
    ClientDPConfig,
    ClientLevelDP,
    GroupedStrategy,
    SecAggConfig,
    SecureAggregation,
    StrategyWrapper,
    merged_metrics,
    rule_option_fields,
    strategy_entry,
)
from strategies.defences import UpdatePolicy
from strategies.registry import RuleOptions, StrategyEntry
from strategies.sampling import SiteSampling
from umedpt.errors import ConfigError

# The reply metric each weighting divides by (``weighted_by_key`` of Flower's FedAvg).
WEIGHT_KEYS = {Weighting.EXAMPLES: wire.NUM_EXAMPLES, Weighting.EQUAL: wire.UNIT_WEIGHT}

Rule = GroupedStrategy | StrategyWrapper


def rule_entry(settings: RunSettings) -> StrategyEntry:
    """The registered rule of ``settings.strategy``; ConfigError naming ``strategy``."""
    try:
        return strategy_entry(settings.strategy)
    except KeyError as exc:
        raise ConfigError(SOURCE, "strategy", str(exc.args[0])) from None


def rule_options(settings: RunSettings) -> RuleOptions:
    """The options of the run's rule, checked; ConfigError naming the key at fault.

    A key that no registered rule declares is refused (a typo would otherwise be ignored);
    another rule's option is allowed (the app config lists every rule's defaults).
    """
    known = rule_option_fields()
    if unknown := sorted(set(settings.rule_options) - set(known)):
        raise ConfigError(
            SOURCE, unknown[0], "is neither a run setting nor an option of any aggregation rule"
        )
    entry = rule_entry(settings)
    try:
        return entry.parse_options(settings.rule_options)
    except ValueError as exc:
        keys = [f.key for f in setting_fields(entry.options)]
        key = next((k for k in keys if k in str(exc)), "strategy")
        raise ConfigError(SOURCE, key, str(exc)) from None


def full_run_config(settings: RunSettings) -> dict[str, Any]:
    """``settings`` as Flower's run config, with every registered rule's options (their
    defaults where not given): what a generated Flower app lists, so that ``flwr run``'s
    ``--run-config`` may override any of them (Flower drops keys its app does not list)."""
    defaults = {key: field.default for key, field in rule_option_fields().items()}
    return {**settings.to_run_config(), **defaults, **settings.rule_options}


def weighting(settings: RunSettings) -> Weighting:
    """The run's weighting: ``auto`` is equal under secure aggregation, else by examples.

    Under secure aggregation weights must not come from what sites say about themselves
    (docs/secure-aggregation.md); ``examples`` is refused there (``check_rule_settings``).
    """
    chosen = Weighting(settings.weighting)
    if chosen is Weighting.AUTO:
        return Weighting.EQUAL if settings.secure_aggregation else Weighting.EXAMPLES
    return chosen


def update_policy(settings: RunSettings) -> UpdatePolicy:
    return UpdatePolicy(
        equal_weights=weighting(settings) is Weighting.EQUAL,
        max_site_share=settings.max_site_share,
        norm_bound=settings.update_norm_bound,
        norm_ratio=settings.update_norm_ratio,
        local_steps=settings.local_steps,
    )


def site_sampling(settings: RunSettings) -> SiteSampling:
    """Which sites train in each round: ``sites-per-round`` or ``fraction`` of them, seeded
    by the run's seed (every connected site when neither is set; under client-level DP the
    wrapper replaces the seed by a secret one, :class:`strategies.ClientLevelDP`)."""
    return SiteSampling(
        per_round=settings.sites_per_round,
        fraction=settings.fraction or 1.0,
        seed=settings.seed,
        minimum=settings.min_sites,
    )


def expected_sites(settings: RunSettings) -> int:
    """Client-level DP's fixed denominator: ``client-dp-expected-sites``, else the expected
    number of sites in a round's release: ``sites-per-round``, or ``min-sites`` without
    sampling. ``fraction`` draws a share of the sites connected that round, which no
    constant set before the run knows: it needs ``client-dp-expected-sites``
    (``check_rule_settings``)."""
    if settings.client_dp_expected_sites:
        return settings.client_dp_expected_sites
    if settings.sites_per_round:
        return settings.sites_per_round
    return settings.min_sites


def client_dp_config(settings: RunSettings) -> ClientDPConfig | None:
    """None when client-level DP is off (``client-dp-noise`` = 0)."""
    if settings.client_dp_noise <= 0:
        return None
    return ClientDPConfig(
        settings.client_dp_noise,
        settings.client_dp_clip,
        settings.client_dp_delta,
        expected_sites=expected_sites(settings),
    )


def secagg_config(settings: RunSettings) -> SecAggConfig | None:
    """The run's secure-aggregation settings, or None when it is off."""
    if not settings.secure_aggregation:
        return None
    return SecAggConfig(
        reconstruction_threshold=settings.secagg_reconstruction_threshold,
        clipping_range=settings.secagg_clipping_range,
        quantization_range=settings.secagg_quantization_range,
        allow_unshared_blocks=settings.secagg_allow_unshared_blocks,
    )


def check_rule_settings(settings: RunSettings) -> None:
    """ConfigError for a rule, its options or a combination the server cannot run."""
    entry = rule_entry(settings)
    rule_options(settings)
    linear = entry.cls.linear
    if settings.client_dp_noise > 0 and not linear:
        raise ConfigError(
            SOURCE,
            "client-dp-noise",
            f"client-level DP clips and averages each site's change with equal weights; "
            f"'{entry.name}' reduces single updates, whose sensitivity that clip does not "
            f"bound. Use a rule whose aggregate is a weighted mean ({', '.join(linear_rules())})"
            f", or set client-dp-noise = 0",
        )
    if (
        settings.client_dp_noise > 0
        and settings.samples_sites
        and not settings.sites_per_round
        and not settings.client_dp_expected_sites
    ):
        raise ConfigError(
            SOURCE,
            "client-dp-expected-sites",
            f"client-level DP divides each noised sum by a number fixed before the run; "
            f"fraction = {settings.fraction} draws a share of whichever sites are connected "
            "in a round, which can exceed the sites waited for and inflate the mean. Set "
            "client-dp-expected-sites to the number of sites a round is expected to train, "
            "or use sites-per-round",
        )
    if (
        settings.secure_aggregation
        and settings.share_blocks
        and settings.samples_sites
        and not settings.secagg_allow_unshared_blocks
    ):
        raise ConfigError(
            SOURCE,
            "secure-aggregation",
            "with share-blocks and sites-per-round/fraction, a round may draw a single site "
            "of a block, and a sum of one update is that update: secure aggregation cannot "
            "hide it. Set secagg-allow-unshared-blocks = true (such a block then keeps its "
            "weights that round, logged), or turn off share-blocks or the sampling",
        )
    if settings.secure_aggregation and weighting(settings) is Weighting.EXAMPLES:
        raise ConfigError(
            SOURCE,
            "weighting",
            "secure aggregation weighs every site equally: example counts are what each site "
            "says about itself (one claim of 1e9 examples would outweigh every other site), "
            'and caps the server chose could single one site out. Set weighting = "equal" '
            '(or "auto"), or turn secure aggregation off',
        )
    if settings.sites_per_round and settings.sites_per_round < settings.min_sites:
        raise ConfigError(
            SOURCE,
            "sites-per-round",
            f"{settings.sites_per_round} sites per round can never give the {settings.min_sites} "
            "replies a round needs (min-sites): raise it or lower min-sites",
        )
    if settings.secure_aggregation and settings.compression == "int8":
        raise ConfigError(
            SOURCE,
            "compression",
            "int8 quantises each site's own change with its own scale and keeps an error "
            "residual at the site; secure aggregation sums masked 32-bit vectors of one common "
            "quantisation, so no int8 payload can be masked or summed, and the uplink would "
            "not shrink. Use fp16 or bf16 (their weights come down in 16 bits; the masked "
            "uplink stays secure aggregation's), or turn secure aggregation off",
        )
    if settings.secure_aggregation:
        problems = []
        if not linear:
            problems.append(f"'{entry.name}' reduces single updates")
        if settings.client_dp_noise > 0:
            problems.append("client-dp-noise clips each site's change at the server")
        if settings.update_norm_bound > 0 or settings.update_norm_ratio > 0:
            problems.append("update-norm-bound/-ratio check each site's change")
        if settings.max_site_share < 1 and weighting(settings) is not Weighting.EQUAL:
            problems.append("max-site-share reweights single sites after training")
        if problems:
            raise ConfigError(
                SOURCE,
                "secure-aggregation",
                "the server only sees sums of the sites' updates, but "
                + "; ".join(problems)
                + f". Use a rule whose aggregate is a weighted mean ({', '.join(linear_rules())})"
                " without these, or turn secure aggregation off",
            )


def linear_rules() -> list[str]:
    from strategies import strategy_names

    return [n for n in strategy_names() if strategy_entry(n).cls.linear]


def build_rule(settings: RunSettings, *, query_timeout: float) -> Rule:
    """The rule ``settings.strategy`` set up for ``settings``, wrapped as the run asks."""
    check_rule_settings(settings)
    entry = rule_entry(settings)
    common: dict[str, Any] = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=settings.min_sites,
        min_evaluate_nodes=settings.min_sites,
        min_available_nodes=settings.sites_to_wait_for,
        weighted_by_key=WEIGHT_KEYS[weighting(settings)],
        arrayrecord_key=wire.SHARED_ARRAYS,
        configrecord_key=wire.CONFIG,
        train_metrics_aggr_fn=merged_metrics,
        evaluate_metrics_aggr_fn=merged_metrics,
    )
    own = rule_options(settings).rule_args()
    if clash := sorted(set(own) & set(common)):
        raise ValueError(f"strategy '{entry.name}' may not override the common arguments {clash}")
    rule = entry.cls(**common, **own)
    rule.setup(
        node_wait_timeout=settings.node_wait_timeout,
        query_timeout=query_timeout,
        min_replies=settings.min_sites,
        eval_every=settings.eval_every,
        policy=update_policy(settings),
        compression=settings.compression,
        sampling=site_sampling(settings) if settings.samples_sites else None,
    )
    if (secagg := secagg_config(settings)) is not None:
        return SecureAggregation(rule, secagg)
    if (client_dp := client_dp_config(settings)) is not None:
        return ClientLevelDP(rule, client_dp)
    return rule
