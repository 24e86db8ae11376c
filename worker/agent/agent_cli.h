#ifndef ROUNDHOUSE_WORKER_AGENT_AGENT_CLI_H_
#define ROUNDHOUSE_WORKER_AGENT_AGENT_CLI_H_

// The `roundhouse-worker agent` command: serves a coordinator until drained.
//
//   roundhouse-worker agent --work-dir DIR --artifact-root DIR [flags]
//
// Flags (`--name=value` or `--name value`; booleans also as bare `--name`):
//   --coordinator HOST:PORT   coordinator address [127.0.0.1:7600]
//   --worker-id ID            stable worker name [<hostname>-<pid>]
//   --work-dir DIR            required; holds jobs/<job_id>/spec.json and
//                             jobs/<job_id>/checkpoint/ (resume state)
//   --artifact-root DIR       required; artifacts land in <dir>/<job_id>
//   --device cpu|cuda         device offered to the coordinator [cpu]
//   --memory-bytes N          memory offered (per GPU on cuda): 0 = physical
//                             RAM for cpu, total memory of the first GPU
//                             (nvidia-smi) for cuda [0]
//   --gpus LIST               cuda: GPU indices jobs may use ("0,1,3"); each
//                             engine gets CUDA_VISIBLE_DEVICES set to its
//                             share [every GPU nvidia-smi lists]
//   --max-concurrent-jobs N   jobs run at once; 0 = one per GPU on cuda, 1 on
//                             cpu [0]
//   --metrics-listen H:P      Prometheus /metrics endpoint; "" = off [""]
//   --engine-binary PATH      program run as `PATH quantize ...` per job
//                             [/proc/self/exe]
//   --cancel-grace-seconds S  SIGTERM -> SIGKILL grace on cancel [10]
//   --once                    exit after one job has finished [false]
//   --threads N               passed to the engine as --threads; 0 = the
//                             engine's default [0]
//   --lease-wait-seconds S    how long one LeaseJob call blocks [5]
//   --help                    print this list
//
// Exit status: 0 after a drain (SIGTERM/SIGINT) or after `--once`; 2 on a
// usage error (message on stderr names the flag); 1 on any other error.
//
// Signals: the first SIGTERM or SIGINT drains (every running engine gets
// SIGTERM, stops at a block boundary after checkpointing, the job is handed
// back with FailJob(PREEMPTED), no further job is leased). The agent installs
// its own signal handling; call RunAgentCommand at most once per process and
// before starting other threads that must not see SIGTERM/SIGINT.

namespace roundhouse::agent {

// `argv[0]` is "agent"; the remaining elements are the flags above.
// Returns the process exit status described above. Not reentrant.
int RunAgentCommand(int argc, char** argv);

}  // namespace roundhouse::agent

#endif  // ROUNDHOUSE_WORKER_AGENT_AGENT_CLI_H_
