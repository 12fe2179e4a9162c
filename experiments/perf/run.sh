#!/bin/bash
# Levers, measured after the experiment runs: each bench alternates our steps with torch's.
# Run 2 (2026-12-03): the Linear backward lever (model.linear_vjp) A/B, and remat's memory.
cd "$(dirname "$0")/../.."
M=.venv/bin/minigpt
O=${OUT:-/tmp/perf3}; rm -rf $O; mkdir -p $O
BIG="--config.train.batch_size=8 --config.model.dropout=0.0"
for r in 1 2; do
  for d in 1 2; do
    for v in auto xla; do
      $M bench train --config configs/shakespeare_char.py:cpu --config.model.linear_vjp=$v \
        --steps 60 --vs torch --cpu_devices $d --out $O/cpu_${d}dev_${v}_r$r.json > $O/cpu_${d}dev_${v}_r$r.log 2>&1
    done
    $M bench train --config configs/shakespeare_char.py $BIG --steps 8 --vs torch --cpu_devices $d \
      --out $O/big_${d}dev_auto_r$r.json > $O/big_${d}dev_auto_r$r.log 2>&1
  done
done
for d in 1 2; do
  $M bench train --config configs/shakespeare_char.py $BIG --config.model.linear_vjp=xla --steps 8 \
    --vs torch --cpu_devices $d --out $O/big_${d}dev_xla_r1.json > $O/big_${d}dev_xla_r1.log 2>&1
done
for remat in none dots block; do
  $M bench train --config configs/shakespeare_char.py $BIG --config.model.remat=$remat --steps 4 \
    --out $O/big_remat_$remat.json > $O/big_remat_$remat.log 2>&1
done
for r in 1 2; do
  rm -rf $O/cache
  MINIGPT_CACHE=$O/cache $M bench train --config configs/shakespeare_char.py:cpu --steps 3 --out $O/cold_r$r.json > /dev/null 2>&1
  MINIGPT_CACHE=$O/cache $M bench train --config configs/shakespeare_char.py:cpu --steps 3 --out $O/warm_r$r.json > /dev/null 2>&1
done
uptime > $O/uptime.txt
echo done > $O/done
