"""What the joules emit: the carbon intensity in force (`intensity`), the
providers that follow the grid (`grid`), the hardware's embodied emissions
(`embodied`), both fetched off the request path (`refresher`, `http`), and
the accounts in grams that keep the process's counters exact (`accounts`)."""
