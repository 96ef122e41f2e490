"""A/B statistics, shadow analysis, decisions and reports on the DuckDB store.

metrics       metric definitions as SQL; per-unit sufficient statistics per arm and phase
moments       SampleMean / Ratio / Paired records (n, sums, squares, cross-products)
significance  Welch t-test (absolute, relative by the delta method), two proportions, CUPED
cuped         CUPED inputs from SQL with a pre-period covariate
sequential    always-valid asymptotic confidence sequences
bayesian      chance to win, risk, credible interval (flat or normal prior)
guards        SRM, minimum samples, Holm / Benjamini-Hochberg, power, MDE, days to MDE
ranks         Mann-Whitney U with ranks in SQL (bounded sample)
quantiles     gbstats' quantile test; bootstrap CIs (bounded sample)
shadow        paired t, Wilcoxon, agreement and similarity of shadow pairs
similarity    normalization and ROUGE-L
decision      gates and verdicts (advance, hold, promote, roll back)
report, html  the experiment report as data and as a self-contained page
tuning        the refresh's hyperparameter search (Optuna study on the gate's held-out loss)
config        ExperimentSettings; constants, errors: messages and the error tree
"""
