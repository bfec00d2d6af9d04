# bpf_object(<name> <source.bpf.c>) compiles one eBPF entry program with clang, generates its
# libbpf skeleton with bpftool and exposes it as the INTERFACE target <name>_skel, whose
# include directory holds "<name>.skel.h". vmlinux.h is generated once per build tree from the
# running kernel's BTF, so programs are CO-RE against the kernel they will load into.
find_program(SLUICE_BPF_CLANG NAMES clang clang-14 REQUIRED)
find_program(SLUICE_BPFTOOL NAMES bpftool PATHS /usr/sbin /usr/local/sbin REQUIRED)
set(SLUICE_VMLINUX_BTF "/sys/kernel/btf/vmlinux" CACHE FILEPATH
    "Kernel BTF that vmlinux.h is generated from")

if(NOT EXISTS "${SLUICE_VMLINUX_BTF}")
    message(FATAL_ERROR
        "sluice: ${SLUICE_VMLINUX_BTF} not found. The eBPF programs are CO-RE and need a kernel "
        "built with CONFIG_DEBUG_INFO_BTF=y, or pass -DSLUICE_VMLINUX_BTF=<file> pointing at a "
        "BTF blob of the target kernel.")
endif()

set(SLUICE_BPF_GEN_DIR "${CMAKE_BINARY_DIR}/bpf-gen")
file(MAKE_DIRECTORY "${SLUICE_BPF_GEN_DIR}")

add_custom_command(
    OUTPUT "${SLUICE_BPF_GEN_DIR}/vmlinux.h"
    COMMAND "${SLUICE_BPFTOOL}" btf dump file "${SLUICE_VMLINUX_BTF}" format c
            > "${SLUICE_BPF_GEN_DIR}/vmlinux.h.tmp"
    COMMAND ${CMAKE_COMMAND} -E rename "${SLUICE_BPF_GEN_DIR}/vmlinux.h.tmp"
            "${SLUICE_BPF_GEN_DIR}/vmlinux.h"
    DEPENDS "${SLUICE_VMLINUX_BTF}"
    COMMENT "Generating vmlinux.h from ${SLUICE_VMLINUX_BTF}"
    VERBATIM)
add_custom_target(sluice_vmlinux_h DEPENDS "${SLUICE_BPF_GEN_DIR}/vmlinux.h")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
    set(SLUICE_BPF_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
    set(SLUICE_BPF_ARCH arm64)
else()
    message(FATAL_ERROR "sluice: unsupported architecture ${CMAKE_SYSTEM_PROCESSOR} for eBPF")
endif()

function(bpf_object name source)
    get_filename_component(src "${source}" ABSOLUTE)
    set(obj "${SLUICE_BPF_GEN_DIR}/${name}.bpf.o")
    set(skel "${SLUICE_BPF_GEN_DIR}/${name}.skel.h")
    add_custom_command(
        OUTPUT "${obj}"
        COMMAND "${SLUICE_BPF_CLANG}" -target bpf -mcpu=v3 -O2 -g -Wall -Werror
                -D__TARGET_ARCH_${SLUICE_BPF_ARCH}
                -I "${SLUICE_BPF_GEN_DIR}" -I "${PROJECT_SOURCE_DIR}/bpf/include"
                -I "${PROJECT_SOURCE_DIR}/bpf"
                -MD -MF "${obj}.d"
                -c "${src}" -o "${obj}"
        DEPENDS "${src}" sluice_vmlinux_h "${SLUICE_BPF_GEN_DIR}/vmlinux.h"
        DEPFILE "${obj}.d"
        COMMENT "BPF ${name}: clang -target bpf"
        VERBATIM)
    add_custom_command(
        OUTPUT "${skel}"
        COMMAND "${SLUICE_BPFTOOL}" gen skeleton "${obj}" name "${name}_bpf" > "${skel}.tmp"
        COMMAND ${CMAKE_COMMAND} -E rename "${skel}.tmp" "${skel}"
        DEPENDS "${obj}"
        COMMENT "BPF ${name}: bpftool gen skeleton"
        VERBATIM)
    add_custom_target(${name}_skel_gen DEPENDS "${skel}")
    add_library(${name}_skel INTERFACE)
    add_dependencies(${name}_skel ${name}_skel_gen)
    target_include_directories(${name}_skel INTERFACE "${SLUICE_BPF_GEN_DIR}"
                               "${PROJECT_SOURCE_DIR}/bpf/include")
    target_link_libraries(${name}_skel INTERFACE PkgConfig::LIBBPF)
endfunction()
