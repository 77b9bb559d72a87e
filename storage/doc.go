// Package storage is shoal's partition engine: the bbolt files a node holds and
// the typed stores built on them (events, room state, accounts, devices, keys,
// streams, media metadata), their migrations, and the snapshot and restore of a
// whole partition for handoff between nodes.
//
// Every actor identity ("room/!abc:example.org", "user/@alice:example.org",
// "device/@alice:example.org/DEVID", …) maps to one of a fixed number of
// partitions with PartitionOf. A partition is one bbolt file; a Store is the
// set of partitions one node currently holds. Everything an actor persists
// lives in its partition's file, under a top-level bucket named by its
// identity with one sub-bucket per typed store (see Namespace), so that moving
// the file moves the actor's data with it.
//
// Writes go through Partition.Update, which group-commits: concurrent callers
// (the different actors of one partition) share one read-write transaction
// and one fsync, and each returns only once its writes are durable. The
// functions given to Update must be pure functions of their inputs and the
// transaction, because a batch is re-run without a failing function; callers
// change their in-memory state only after Update returned nil.
//
// Partition.Snapshot and Restore (or Store.Install, for a snapshot already in
// a file) copy a partition consistently while it keeps taking writes; an epoch
// stored in the partition (SetEpoch, UpdateAt, and handles from At that fence
// every Update) refuses writes from a node that lost ownership, and a seal
// (Seal, Unseal) stops all writes to a partition on its way to another node
// and records where it was going. BlobSums, InstallBlobs and Store.Drop move
// and delete the files that belong with a partition file: its media blobs and
// indexes derived from it.
//
// The package knows nothing of HTTP, of actors or of the cluster: it is given
// paths, partition numbers and functions over bbolt transactions.
package storage
