#version 450
// Compaction copy: one workgroup copies one chunk of at most 4096 16-byte
// elements (64 KiB).  Every invocation first loads its (at most 16) elements
// into registers, the whole workgroup meets at a barrier, and only then does
// anyone store: a chunk whose destination overlaps its own source (an entry
// slid down by less than 64 KiB) is therefore copied correctly.  Different
// chunks of one dispatch never overlap each other; the host orders dependent
// chunks into separate dispatches ("waves") with pipeline barriers between.
//
// The loops below run exactly 16 iterations and are unrolled: lavapipe stops
// any loop after 65,535 iterations without an error, so no loop here may be
// able to run long.
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

const uint INVOCATIONS = 256u;
const uint ELEMENTS_PER_INVOCATION = 16u;

// Offsets are in 16-byte elements relative to the bound windows, so a window
// of up to 64 GiB fits in a uint.
struct Chunk {
    uint source_element;
    uint destination_element;
    uint element_count;  // 1 .. 4096
    uint unused;
};

// Source and destination are separate bindings so that a chunk can read from
// one window and write another (or another block); both may be the same
// buffer range.
layout(std430, set = 0, binding = 0) readonly buffer SourceWindow { uvec4 source[]; };
layout(std430, set = 0, binding = 1) writeonly buffer DestinationWindow { uvec4 destination[]; };
layout(std430, set = 0, binding = 2) readonly buffer ChunkTable { Chunk chunks[]; };

layout(push_constant) uniform Push {
    uint first_chunk;  // table index of this dispatch's workgroup 0
} push;

void main() {
    Chunk chunk = chunks[push.first_chunk + gl_WorkGroupID.x];
    uint lane = gl_LocalInvocationID.x;
    uvec4 held[ELEMENTS_PER_INVOCATION];

    // Uniform over the workgroup: short chunks skip the rounds they do not
    // need (lavapipe runs every predicated access of a round lane by lane).
    // Element i * 256 + lane: neighbouring invocations touch neighbouring
    // elements, which is what GPUs coalesce.
    uint rounds = (chunk.element_count + INVOCATIONS - 1u) / INVOCATIONS;
    [[unroll]] for (uint i = 0u; i < ELEMENTS_PER_INVOCATION; ++i) {
        if (i >= rounds) break;
        uint element = i * INVOCATIONS + lane;
        if (element < chunk.element_count) {
            held[i] = source[chunk.source_element + element];
        }
    }

    // Every load of the workgroup completes before any store below.
    memoryBarrierBuffer();
    barrier();

    [[unroll]] for (uint i = 0u; i < ELEMENTS_PER_INVOCATION; ++i) {
        if (i >= rounds) break;
        uint element = i * INVOCATIONS + lane;
        if (element < chunk.element_count) {
            destination[chunk.destination_element + element] = held[i];
        }
    }
}
