// Stand-in for CUDA's cuda_bf16.h in host builds: cuda_host.h (force-included) defines the types.
#pragma once
