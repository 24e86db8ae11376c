#include "client/exit_codes.h"

namespace roundhouse::client {

namespace v1 = ::roundhouse::v1;

int ExitCodeForState(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_SUCCEEDED:
      return kExitOk;
    case v1::JOB_STATE_FAILED:
      return kExitFailed;
    case v1::JOB_STATE_CANCELLED:
      return kExitCancelled;
    case v1::JOB_STATE_DEADLINE_EXCEEDED:
      return kExitDeadline;
    case v1::JOB_STATE_FAILED_QUALITY:
      return kExitFailedQuality;
    default:
      return kExitRpc;
  }
}

bool IsTerminal(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_SUCCEEDED:
    case v1::JOB_STATE_FAILED:
    case v1::JOB_STATE_CANCELLED:
    case v1::JOB_STATE_DEADLINE_EXCEEDED:
    case v1::JOB_STATE_FAILED_QUALITY:
      return true;
    default:
      return false;
  }
}

}  // namespace roundhouse::client
