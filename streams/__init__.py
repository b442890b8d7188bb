"""Stream processing: series and study completion, the rule language, routing decisions.

The flow: `worker` (the Faust app) folds instances and series facts into `completion` state,
publishes completions when due and decides them with `decisions` against the `config` folded by
`view`; `rules` is the rule language; `cli` holds `talaria config ...` and `talaria streams run`.

Errors (all `infra.errors.TalariaError`):
- `config.ConfigInvalid` (permanent): a configuration document or mercure file that cannot be
  applied; the message lists every problem.
- `view.ConfigUnavailable` (transient): the config topic could not be read in time.
- `rules.RuleError` and its subclasses never leave `rules.evaluate`; they become the `errors` of
  `RulesEvaluated`.
"""
