"""The Sideways recurrence, free of Keras models, optimizers and metrics.

Where things live (docs/algorithm.md has the longer map):

- `state`: `PipelineState` (the buffers, named fields), `StateLayout` (their shapes; the
  streaming dict), `StreamBuffers` (a stateful model's variables in the same layout).
- `windows`: `gather_windows`, the one window gathering; `stage_inputs` for a stage in a chunk.
- `plan`: `StagePlan`/`chunk_plan` (which ticks each stage computes and tapes; the fill logic),
  `LoopPlan` (how a step is cut into chunks).
- `policy`: `TickLoop`, the tick-loop policy (chunk size, iterations in flight, fill) and the
  two stage predicates; where a second schedule is chosen.
- `recurrence`: `stage_forward`/`stage_pullback` (one stage over one chunk), `chunk_forward`/
  `chunk_pullback` (the chunked schedule), `stream_tick` (inference).
- `loop`: `run_step`, the chunked `tf.while_loop` over a clip with the step's bookkeeping; the
  model plugs in through `StepHooks`.
- `skewed`: `run_skewed_step`, the skewed (depth-parallel) loop with the same inputs: stage k on
  chunk i-k forward and chunk i-(2K-2-k) pullback, the stages of an iteration independent.
- `gradients`: per-stage sums, counts and means; `losses`: per-tick loss, regularisation.
- `exact`: the synchronous forward and the backprop baseline; `placement`: stage devices.
- `tensors`: time-axis helpers.

Seams for a schedule (as `skewed` uses them): timing from `schedule`, gather with
`windows.stage_inputs`, call `recurrence.stage_forward` and `recurrence.stage_pullback` per stage
on its own chunk, reuse `loop.StepHooks`/`StepTotals` for what the model adds, add its name to
`policy.SCHEDULES` and its runner to `steps.SCHEDULE_RUNNERS`.
"""
