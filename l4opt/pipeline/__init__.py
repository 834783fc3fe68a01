"""One trial: context, quantize (ModelOpt), export, runners, drift, status, latency, row."""
