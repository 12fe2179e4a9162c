#!/bin/bash
# Levers, measured after the experiment runs: each bench alternates our steps with torch's.
cd "$(dirname "$0")/../.."
M=.venv/bin/minigpt
O=${OUT:-/tmp/perf2}; rm -rf $O; mkdir -p $O
BIG="--config.train.batch_size=8 --config.model.dropout=0.0"
for r in 1 2; do
  $M bench train --config configs/shakespeare_char.py:cpu --steps 60 --vs torch --out $O/cpu_1dev_r$r.json > $O/cpu_1dev_r$r.log 2>&1
  $M bench train --config configs/shakespeare_char.py:cpu --steps 60 --vs torch --cpu_devices 2 --out $O/cpu_2dev_r$r.json > $O/cpu_2dev_r$r.log 2>&1
  $M bench train --config configs/shakespeare_char.py $BIG --steps 8 --vs torch --out $O/big_1dev_r$r.json > $O/big_1dev_r$r.log 2>&1
  $M bench train --config configs/shakespeare_char.py $BIG --steps 8 --vs torch --cpu_devices 2 --out $O/big_2dev_r$r.json > $O/big_2dev_r$r.log 2>&1
done
for r in 1 2; do
  rm -rf $O/cache
  MINIGPT_CACHE=$O/cache $M bench train --config configs/shakespeare_char.py:cpu --steps 3 --out $O/cold_r$r.json > /dev/null 2>&1
  MINIGPT_CACHE=$O/cache $M bench train --config configs/shakespeare_char.py:cpu --steps 3 --out $O/warm_r$r.json > /dev/null 2>&1
done
uptime > $O/uptime.txt
echo done > $O/done
