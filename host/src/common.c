#include "host/common.h"

char host_null_sentinel;
