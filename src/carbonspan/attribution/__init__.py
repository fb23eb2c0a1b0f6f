"""How measured joules are split between concurrent requests: the ledger
(`ledger`, with its ring of ticks in `ticks`, its windows in `window`, its
books in `totals`), what one request is charged (`measurement`), the
policies (`policies`, with the power models of `estimator`), the checked
readings (`readings`), and the per-request CPU clocks of `cpu_time`
(`cpu_clock`)."""
