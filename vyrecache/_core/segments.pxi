# The log of each tier: its memory cut into segments, appends, and the cleaner's choice.
#
#   block 0 of tier t                                 block 1 of tier t
#   [seg 0: CLOSED][seg 1: OPEN (head)][seg 2: FREE]  [seg 3: RUN][seg 4: RUN][seg 5: CLOSED]
#    e5 e9 . e2 .   e7 e1 e4 ->fill                     one entry of 2 segments   e3 . . e8
#
# * New entries are appended at the head's fill cursor; when it has no room left the head is
#   closed and a free segment opens.  Freeing an entry only subtracts its bytes from its
#   segment's `live`; a closed segment whose live drops to 0 is free again at once.
# * Closed segments without pinned entries sit in a histogram by live bytes (64 buckets), so the
#   emptiest is found in O(1): the lowest set bit of `bucket_bits`, then that bucket's first.
# * Cleaning copies the live entries of the emptiest closed segment V into a free survivor
#   segment R, frees V, and makes R the head.  One free segment is kept for that (the reserve):
#   a fresh segment is opened for appends only while two are free.
# * The bound: a tier's entries hold at most `capacity` bytes of `memory` = capacity / (1 - s)
#   (s = headroom), so the average closed segment is at most (1 - s) live and so is the
#   emptiest.  Cleaning it copies u bytes to gain seg - u: at most (1 - s) / s bytes copied per
#   byte of room made, whatever the number of entries.  Pinned segments are never cleaned; their
#   bytes weaken the bound (see README).
# * An entry larger than a segment takes a run of whole consecutive segments of one block.

cdef enum SegmentState:
    SEG_FREE = 0
    SEG_OPEN = 1        # the tier's head: appends go to its fill cursor
    SEG_CLOSED = 2
    SEG_RUN = 3         # one of the segments of an entry larger than a segment
    SEG_CLAIMED = 4     # being emptied for a run (never appended to, never cleaned)

cdef enum:
    # Segments are bucketed by their live fraction; one bit each in TierLog.bucket_bits.
    N_BUCKETS = 64
    # A tier gets at least this many segments (smaller segments for small tiers), so the reserve
    # and the open head are a small part of its memory and the emptiest segment is near the average.
    MIN_SEGMENTS = 16

ctypedef struct Segment:
    uint64_t offset         # byte offset in its block
    uint64_t fill           # append cursor, from the segment's start
    uint64_t live           # charged bytes of the entries whose ranges lie in it
    uint64_t touched_wave   # the last copy-table wave with a row reading or writing it
    int32_t block           # global block index
    int32_t tier
    uint32_t first          # its entries in append order (slots, through slot_next); a run: its entry
    uint32_t last
    int32_t link_prev       # histogram bucket list, or the free stack (link_next only)
    int32_t link_next
    uint32_t pinned         # entries in it that are pinned
    int16_t bucket          # its histogram bucket while listed, else -1
    uint8_t state

ctypedef struct TierLog:
    uint64_t segment_size
    uint64_t max_entry          # largest charged size one entry may have (a run inside one block)
    uint64_t memory             # bytes taken: n_segments * segment_size
    uint64_t live
    uint64_t bucket_bits        # bit b set: bucket b holds a segment
    int32_t buckets[64]         # N_BUCKETS
    int32_t first_segment
    int32_t n_segments
    int32_t head                # the open segment, -1 when none
    int32_t free_top            # the free stack
    int32_t n_free
    int32_t n_pinned            # segments holding a pinned entry


def tier_layout(capacity, headroom, segment_size, alignment, max_block):
    """(segment_size, segments, segments_per_block) of a tier whose entries hold `capacity` bytes.

    The entries may fill at most 1 - headroom of the segments, plus one reserve segment for the
    cleaner.  Small tiers get smaller segments (at least MIN_SEGMENTS of them).
    """
    def up(value):
        return -(-value // alignment) * alignment
    wanted = math.ceil(capacity / (1.0 - headroom)) if capacity else 0
    seg = max(alignment, min(up(max(wanted // MIN_SEGMENTS, 1)), up(max(segment_size, 1)),
                             max_block // alignment * alignment))
    usable = max(1, math.ceil(capacity / ((1.0 - headroom) * seg)))
    return seg, usable + 1, max(1, max_block // seg)


cdef inline int _bucket_of(uint64_t live, uint64_t seg) noexcept nogil:
    return <int>((live * N_BUCKETS) // (seg + 1))


cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil
