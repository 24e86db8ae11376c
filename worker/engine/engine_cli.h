#ifndef ROUNDHOUSE_WORKER_ENGINE_ENGINE_CLI_H_
#define ROUNDHOUSE_WORKER_ENGINE_ENGINE_CLI_H_

// The engine's command line (docs/architecture.md, "Engine command line"):
//
//   quantize --model DIR --spec FILE --out DIR [--checkpoint-dir DIR]
//            [--device cpu|cuda] [--low-memory] [--threads N]
//       Runs engine::Quantize. One JSON event per line on stdout ("stage",
//       "plan", "block", "checkpoint", then "done" or "error"); human
//       logs on stderr. SIGTERM / SIGINT stop at the next block boundary
//       after its checkpoint. Exit status: 0 success; 2 invalid spec, model
//       or data (also usage errors); 3 out of memory; 4 interrupted; 5 the
//       quality gate failed (artifact written and kept, a "done" event is
//       printed before the "error" event); 1 any other error.
//   inspect --model DIR [--json] [--bits B] [--group-size G]
//       Prints engine::InspectModel (a table, or JSON with --json).
//   generate --family F --out DIR [--preset tiny|colqwen3-4b] [--layers N]
//            [--hidden H] [--intermediate I] [--heads A] [--kv-heads K]
//            [--head-dim D] [--vocab V] [--dtype float32|bfloat16]
//            [--seed S] [--calib-samples N --calib-seqlen L]
//            [--max-shard-bytes B]
//       Writes a random-initialised checkpoint (engine::GenerateCheckpoint).
//   estimate --model DIR --spec FILE [--device cuda|cpu] [--gpus N]
//            [--low-memory]
//       Prints the admission estimate of peak device memory per GPU
//       (common/memory_estimate.h, MemoryEstimate::ToJson) for the model's
//       config.json and the resolved spec; --device defaults to cuda. Exit
//       2 with a message naming the flag/file/field on bad input.
//   --help
//
// Flags are `--name value` or `--name=value`. Plain argv parsing (no absl
// flags): the agent's absl flags live in the same binary.
//
// Not reentrant: `quantize` installs SIGTERM/SIGINT handlers for the
// process.

namespace roundhouse::engine {

// argv[0] is the program name, argv[1] the command. Returns the exit status.
int RunEngineCommand(int argc, char** argv);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_ENGINE_CLI_H_
